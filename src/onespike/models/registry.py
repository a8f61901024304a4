"""Model registry and loading of the pre-trained weights shipped with the package.

Weights live in ``onespike/assets/weights/{name}.pt`` (a ``state_dict``; fp32 for the
MNIST CNN, fp16 for the CIFAR models, always cast back to fp32 on load) next to a JSON
sidecar ``{name}.json`` written by :mod:`onespike.experiments.train` with the exact command, seed,
epochs and the measured test accuracy.  The sidecar also records which architecture
(``model``) and constructor arguments (``model_kwargs``) a file belongs to, so a file such
as ``vgg11_bn_w0.5.pt`` loads the right shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from onespike.errors import UnknownNameError
from onespike.models.fastvgg import fast_vgg
from onespike.models.gcn import gcn, gcn_res
from onespike.models.mnist import mnist_cnn
from onespike.models.resnet import resnet20
from onespike.models.vgg import vgg11_bn
from onespike.models.vit import (
    vit_cifar,
    vit_cifar_relu,
    vit_small,
    vit_stem,
    vit_stem_relu,
    vit_tiny,
    vit_tiny_relu,
)
from onespike.models.weights import (
    PretrainedWeightsNotFoundError,
    available_pretrained,
    load_state_dict_file,
    weights_dir,
)

__all__ = [
    "MODELS",
    "ModelSpec",
    "PretrainedWeightsNotFoundError",
    "available_models",
    "available_pretrained",
    "get_model",
    "get_spec",
    "load_pretrained",
    "load_state_dict_file",
    "pretrained_info",
    "weights_dir",
]


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of the package needs to know about a registered architecture."""

    name: str
    builder: Callable[..., nn.Module]
    dataset: str  # "mnist", "cifar10", or the default graph ("cora") of a graph model
    input_shape: tuple[int, ...]  # graph models: [F] node features of the default graph
    train_command: str  # the command that produces (or produced) the shipped weights
    defaults: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelSpec] = {
    "mnist_cnn": ModelSpec(
        "mnist_cnn",
        mnist_cnn,
        "mnist",
        (1, 28, 28),
        "python -m onespike.experiments.train --model mnist_cnn --epochs 6 --seed 0 "
        "--batch-size 128 --lr 0.05 --threads 1 --out src/onespike/assets/weights",
    ),
    "resnet20": ModelSpec(
        "resnet20",
        resnet20,
        "cifar10",
        (3, 32, 32),
        "python -m onespike.experiments.train --model resnet20 --epochs 200 --seed 0 "
        "--batch-size 128 --lr 0.1 --threads 1 --channels-last --name resnet20 "
        "--checkpoint checkpoints/resnet20_orig.ckpt --resume --no-progress --out checkpoints/new",
    ),
    "vgg11_bn": ModelSpec(
        "vgg11_bn",
        vgg11_bn,
        "cifar10",
        (3, 32, 32),
        "python -m onespike.experiments.train --model vgg11_bn --width 0.5 --epochs 12 --seed 0 "
        "--batch-size 128 --lr 0.1 --threads 1 --channels-last "
        "--checkpoint checkpoints/vgg11_bn_w0.5_e12.ckpt --resume "
        "--out src/onespike/assets/weights",
    ),
    "fast_vgg": ModelSpec(
        "fast_vgg",
        fast_vgg,
        "cifar10",
        (3, 32, 32),
        "python -m onespike.experiments.train --model fast_vgg --recipe airbench --epochs 24 "
        "--seed 0 --threads 1 --channels-last --name fast_vgg_e24 "
        "--checkpoint checkpoints/fast_vgg_orig.ckpt --resume --no-progress --out checkpoints/new",
    ),
    # issue 27: a BN/ReLU vision transformer (attention traced; conversion in progress)
    "vit_tiny": ModelSpec(
        "vit_tiny",
        vit_tiny,
        "mnist",
        (1, 28, 28),
        "python -m onespike.experiments.train --model vit_tiny --epochs 15 --seed 0 "
        "--batch-size 128 --lr 0.05 --threads 1 --checkpoint checkpoints/vit_tiny.ckpt "
        "--resume --no-progress --out checkpoints/new",
    ),
    # the same ViT with ReLU attention (relu(scores) / N): the softmax ablation of issue 27
    "vit_tiny_relu": ModelSpec(
        "vit_tiny_relu",
        vit_tiny_relu,
        "mnist",
        (1, 28, 28),
        "python -m onespike.experiments.train --model vit_tiny_relu --epochs 15 --seed 0 "
        "--batch-size 128 --lr 0.05 --threads 1 --checkpoint checkpoints/vit_tiny_relu.ckpt "
        "--resume --no-progress --out checkpoints/new",
    ),
    # vit_tiny's blocks on 4x4 patches (49 tokens), trained with the activation penalty
    "vit_small": ModelSpec(
        "vit_small",
        vit_small,
        "mnist",
        (1, 28, 28),
        "python -m onespike.experiments.train --model vit_small --epochs 15 --seed 0 "
        "--batch-size 128 --lr 0.05 --activation-l1 0.01 --threads 1 "
        "--checkpoint checkpoints/vit_small.ckpt --resume --no-progress --out checkpoints/new",
    ),
    # vit_small's blocks behind a convolutional stem: issue 27's Fashion-MNIST target
    "vit_stem": ModelSpec(
        "vit_stem",
        vit_stem,
        "fashion-mnist",
        (1, 28, 28),
        "python -m onespike.experiments.train --model vit_stem --dataset fashion-mnist "
        "--epochs 20 --seed 0 --batch-size 128 --lr 0.05 --activation-l1 0.05 --threads 1 "
        "--checkpoint checkpoints/vit_stem.ckpt --resume --no-progress --out checkpoints/new",
    ),
    # vit_stem with ReLU attention: fewer spikes per neuron (issue 27's Fashion-MNIST target)
    "vit_stem_relu": ModelSpec(
        "vit_stem_relu",
        vit_stem_relu,
        "fashion-mnist",
        (1, 28, 28),
        "python -m onespike.experiments.train --model vit_stem_relu --dataset fashion-mnist "
        "--epochs 20 --seed 0 --batch-size 128 --lr 0.05 --activation-l1 0.05 --threads 1 "
        "--checkpoint checkpoints/vit_stem_relu.ckpt --resume --no-progress "
        "--out checkpoints/new",
    ),
    # a ViT with a convolutional stem for CIFAR-10 (issue 27's CIFAR target)
    "vit_cifar": ModelSpec(
        "vit_cifar",
        vit_cifar,
        "cifar10",
        (3, 32, 32),
        "python -m onespike.experiments.train --model vit_cifar --epochs 40 --seed 0 "
        "--batch-size 128 --lr 0.05 --threads 1 --channels-last "
        "--checkpoint checkpoints/vit_cifar.ckpt --resume --no-progress --out checkpoints/new",
    ),
    # vit_cifar with ReLU attention: issue 27's softmax-against-ReLU ablation on CIFAR-10
    "vit_cifar_relu": ModelSpec(
        "vit_cifar_relu",
        vit_cifar_relu,
        "cifar10",
        (3, 32, 32),
        "python -m onespike.experiments.train --model vit_cifar_relu --epochs 40 --seed 0 "
        "--batch-size 128 --lr 0.05 --threads 1 --channels-last "
        "--checkpoint checkpoints/vit_cifar_relu.ckpt --resume --no-progress "
        "--out checkpoints/new",
    ),
    # graph models: the builder reads the adjacency from the Planetoid files (see
    # onespike.models.gcn.load_pretrained_gcn); weights gcn_{cora,citeseer}, gcn_res_...
    "gcn": ModelSpec(
        "gcn",
        gcn,
        "cora",
        (1433,),
        "python -m onespike.experiments.gcn train --model gcn --dataset cora --seeds 0 "
        "--out src/onespike/assets/weights",
    ),
    "gcn_res": ModelSpec(
        "gcn_res",
        gcn_res,
        "cora",
        (1433,),
        "python -m onespike.experiments.gcn train --model gcn_res --dataset cora --seeds 0 "
        "--out src/onespike/assets/weights",
    ),
}


def available_models() -> list[str]:
    """Names accepted by :func:`get_model`."""
    return sorted(MODELS)


def get_spec(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` of a registered architecture."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(available_models())
        raise UnknownNameError(f"unknown model {name!r}; known: {known}") from None


def get_model(name: str, **kw: Any) -> nn.Module:
    """Build a freshly initialised model by name, e.g. ``get_model("vgg11_bn", width=0.5)``."""
    return get_spec(name).builder(**kw)


def pretrained_info(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """Read the JSON sidecar ``{name}.json`` (command, seed, epochs, accuracy, ...)."""
    d = Path(root) if root is not None else weights_dir()
    path = d / f"{name}.json"
    if not path.is_file():
        raise PretrainedWeightsNotFoundError(_missing_message(name, path))
    with path.open() as f:
        return json.load(f)


def load_pretrained(name: str, root: str | Path | None = None) -> nn.Module:
    """Build ``name`` and load its shipped weights; returned in eval mode, fp32, on CPU.

    ``name`` is a weight-file stem (e.g. ``"mnist_cnn"``).  The architecture and its
    constructor arguments come from the JSON sidecar when present, else ``name`` must be
    a registered architecture.  A missing file raises :class:`PretrainedWeightsNotFoundError`
    whose message gives the training command that produces it.
    """
    d = Path(root) if root is not None else weights_dir()
    pt = d / f"{name}.pt"
    if not pt.is_file():
        raise PretrainedWeightsNotFoundError(_missing_message(name, pt))
    arch, kwargs = name, {}
    if (d / f"{name}.json").is_file():
        info = pretrained_info(name, d)
        arch, kwargs = info.get("model", name), dict(info.get("model_kwargs", {}))
    model = get_model(arch, **kwargs)
    model.load_state_dict(load_state_dict_file(pt))
    return model.eval()


def _missing_message(name: str, path: Path) -> str:
    if name in MODELS:
        cmd = MODELS[name].train_command
    else:
        cmd = (
            f"python -m onespike.experiments.train --model <arch> --name {name} "
            "--out src/onespike/assets/weights"
        )
    return (
        f"no pretrained weights for {name!r}: {path} does not exist. "
        f"Produce them with:\n    {cmd}\n(run from the repository root; see docs/MODELS.md)"
    )
