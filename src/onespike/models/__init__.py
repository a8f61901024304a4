"""ANN architectures used by onespike and loading of their shipped pre-trained weights.

All models take raw pixels in ``[0, 1]`` (no normalisation layer, so the converter sees
non-negative inputs), use one non-in-place ``nn.ReLU`` module per activation, and trace
with :func:`torch.fx.symbolic_trace`.  See ``docs/MODELS.md``.

:mod:`~onespike.models.weights` finds and loads weight files (a leaf module);
:mod:`~onespike.models.registry` names the architectures and their shipped weights;
:mod:`~onespike.models.resolve` turns what a user typed (a shipped name or
``package.module:function``) into a model.
"""

from onespike.models.fastvgg import FastVGG, fast_vgg, init_whitening
from onespike.models.gcn import GCN, DeepGCN, gcn, gcn_res, load_pretrained_gcn
from onespike.models.mnist import MNISTCNN, mnist_cnn
from onespike.models.registry import (
    MODELS,
    ModelSpec,
    PretrainedWeightsNotFoundError,
    available_models,
    available_pretrained,
    get_model,
    get_spec,
    load_pretrained,
    load_state_dict_file,
    pretrained_info,
    weights_dir,
)
from onespike.models.resnet import BasicBlock, CIFARResNet, resnet20
from onespike.models.resolve import load_user_model, resolve_model
from onespike.models.vgg import VGG, VGG11_CFG, vgg11_bn
from onespike.models.vit import (
    ViT,
    vit_cifar,
    vit_cifar_relu,
    vit_small,
    vit_stem,
    vit_stem_relu,
    vit_tiny,
    vit_tiny_relu,
)

__all__ = [
    "GCN",
    "MNISTCNN",
    "MODELS",
    "VGG",
    "VGG11_CFG",
    "BasicBlock",
    "CIFARResNet",
    "DeepGCN",
    "FastVGG",
    "ModelSpec",
    "PretrainedWeightsNotFoundError",
    "ViT",
    "available_models",
    "available_pretrained",
    "fast_vgg",
    "gcn",
    "gcn_res",
    "get_model",
    "get_spec",
    "init_whitening",
    "load_pretrained",
    "load_pretrained_gcn",
    "load_state_dict_file",
    "load_user_model",
    "mnist_cnn",
    "pretrained_info",
    "resnet20",
    "resolve_model",
    "vgg11_bn",
    "vit_cifar",
    "vit_cifar_relu",
    "vit_small",
    "vit_stem",
    "vit_stem_relu",
    "vit_tiny",
    "vit_tiny_relu",
    "weights_dir",
]
