#!/usr/bin/env bash
# Train the standard CIFAR-10 networks on the original release (../shared/data/cifar10/
# cifar-10-batches-py), into checkpoints/new; copy {name}.pt/.json into
# src/onespike/assets/weights once a run has finished and reached its bar.
#
#   scripts/train_cifar.sh resnet20   ResNet-20, the standard recipe: SGD (momentum 0.9,
#                                     Nesterov), cosine schedule, weight decay 5e-4, random
#                                     crop and flip, 200 epochs, batch 128 (bar: 91.5 %)
#   scripts/train_cifar.sh vit_cifar  the ViT with a convolutional stem (issue 27): the standard
#                                     recipe at LR 0.05, 40 epochs, batch 128 (bar: 85 %;
#                                     reached 85.54 %)
#   scripts/train_cifar.sh vit_cifar_relu  the same with ReLU attention (issue 27's
#                                     softmax-against-ReLU ablation on CIFAR-10; same recipe)
#   scripts/train_cifar.sh fast_vgg   the airbench94-style VGG (--recipe airbench,
#                                     docs/MODELS.md), 24 epochs of batches of 1024, written
#                                     as fast_vgg_e24 (bar: 93.5 %; reached 93.75 %)
#
# Both write a checkpoint after every epoch and resume from it when rerun. A ResNet-20 epoch
# takes about 85 s with THREADS=2 on 2 quiet cores (200 epochs: about 5 hours) and 3-16
# minutes on one thread beside other jobs; a fast_vgg epoch 8-17 minutes on a shared CPU;
# on a GPU (DEVICE=cuda) seconds. Give the training the cores: beside other jobs it crawls. THREADS (default 1) and
# DEVICE (default cpu) are passed through.
#
# vit_cifar: about 330 s per epoch on one quiet thread, 190 s on two (40 epochs: 2-4 hours).
#
# A CPU run can outlive one working session through git: checkpoints/carry/ is tracked while
# a run is unfinished (ResNet-20's and vit_cifar's were carried until their runs finished;
# fast_vgg's 23 MB is not carried). The script starts from the carried checkpoint when there
# is no local one; `scripts/train_cifar.sh carry` copies the local checkpoints there, to be
# committed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
DEVICE="${DEVICE:-cpu}"
THREADS="${THREADS:-1}"
what="${1:?usage: scripts/train_cifar.sh resnet20|vit_cifar|vit_cifar_relu|fast_vgg|carry}"
mkdir -p checkpoints/new checkpoints/carry
case "$what" in
carry)
    for f in resnet20_orig vit_cifar vit_cifar_relu; do
        if [ -f "checkpoints/$f.ckpt" ]; then cp "checkpoints/$f.ckpt" "checkpoints/carry/$f.ckpt"; fi
    done
    ;;
resnet20)
    if [ ! -f checkpoints/resnet20_orig.ckpt ] && [ -f checkpoints/carry/resnet20_orig.ckpt ]; then
        cp checkpoints/carry/resnet20_orig.ckpt checkpoints/resnet20_orig.ckpt
    fi
    "$PY" -m onespike.experiments.train --model resnet20 --epochs 200 --seed 0 --batch-size 128 \
        --lr 0.1 --threads "$THREADS" --channels-last --device "$DEVICE" --name resnet20 \
        --checkpoint checkpoints/resnet20_orig.ckpt --resume --no-progress --out checkpoints/new
    ;;
vit_cifar | vit_cifar_relu)
    if [ ! -f "checkpoints/$what.ckpt" ] && [ -f "checkpoints/carry/$what.ckpt" ]; then
        cp "checkpoints/carry/$what.ckpt" "checkpoints/$what.ckpt"
    fi
    "$PY" -m onespike.experiments.train --model "$what" --epochs 40 --seed 0 --batch-size 128 \
        --lr 0.05 --threads "$THREADS" --channels-last --device "$DEVICE" \
        --checkpoint "checkpoints/$what.ckpt" --resume --no-progress --out checkpoints/new
    ;;
fast_vgg)
    "$PY" -m onespike.experiments.train --model fast_vgg --recipe airbench --epochs 24 --seed 0 \
        --threads "$THREADS" --channels-last --device "$DEVICE" --name fast_vgg_e24 \
        --checkpoint checkpoints/fast_vgg_orig.ckpt --resume --no-progress --out checkpoints/new
    ;;
*)
    echo "unknown target $what (resnet20 | vit_cifar | vit_cifar_relu | fast_vgg | carry)" >&2
    exit 2
    ;;
esac
