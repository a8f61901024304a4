"""The shipped `fast_vgg_e24` converts on real CIFAR-10 data (tests/integration/cifar.py)."""

from tests.integration.cifar import check_conversion


def test_shipped_fast_vgg_e24_converts() -> None:
    check_conversion("fast_vgg_e24")
