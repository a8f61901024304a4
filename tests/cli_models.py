"""Model factories for the command-line tests (``--model tests.cli_models:NAME``)."""

from torch import nn

from onespike.models import load_pretrained


def mnist():
    return load_pretrained("mnist_cnn")


def gelu_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.GELU(), nn.Linear(10, 10))


def not_a_model():
    return "model.pt"
