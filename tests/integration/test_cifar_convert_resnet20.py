"""The shipped `resnet20` converts on real CIFAR-10 data (tests/integration/cifar.py)."""

from tests.integration.cifar import check_conversion


def test_shipped_resnet20_converts() -> None:
    check_conversion("resnet20")
