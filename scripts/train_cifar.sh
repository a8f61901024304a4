#!/usr/bin/env bash
# Train the shipped CIFAR-10 models (src/onespike/assets/weights/{resnet20,vgg11_bn_w0.5}.*).
# CPU only, sized for a 2-core machine: ResNet-20 24 epochs (about 2.5 minutes each on
# 2 threads), VGG-11-BN at half width 12 epochs (about 4 minutes each on 1 thread, run
# beside other work). Both runs write a checkpoint after every epoch; rerunning this
# script resumes them where they stopped. With a GPU or more cores, train longer.
# fast_vgg (airbench-style VGG, --recipe airbench; aimed at >= 93 %) is not part of "all":
# 16 epochs of batches of 1024, about 8 min per epoch on a quiet thread (13 min when the
# 2-core machine is shared with 4 other jobs), i.e. 2-3.5 hours; run it on its own.
#   scripts/train_cifar.sh            resnet20 and vgg
# resnet20_e100 (the standard 100-epoch recipe, aimed at >= 91.5 %) is not part of "all"
# either: 100 epochs at 3-9 minutes each on one thread, i.e. 5-15 hours across sessions.
#   scripts/train_cifar.sh resnet20   one of them (resnet20 | vgg | fast_vgg | resnet20_e100)
# resnet20_e200 (the standard recipe over 200 epochs) is sized for a GPU: about 4 s an epoch
# on an H200, 3-9 minutes on one CPU thread.  DEVICE=cpu (the default is cuda) resumes
# or runs it on the CPU; the shipped weights ran 175 epochs on an H200 and 25 on a CPU.
#   scripts/train_cifar.sh vgg_gpu    the four fast_vgg GPU runs of docs/MODELS.md (about
#                                      2 minutes in all on an H200), into checkpoints/gpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
what="${1:-all}"
mkdir -p checkpoints
if [[ "$what" == all || "$what" == resnet20 ]]; then
    "$PY" -m onespike.experiments.train --model resnet20 --epochs 24 --seed 0 --batch-size 128 --lr 0.1 \
        --threads 2 --channels-last --checkpoint checkpoints/resnet20_e24.ckpt --resume \
        --out src/onespike/assets/weights
fi
if [[ "$what" == all || "$what" == vgg ]]; then
    "$PY" -m onespike.experiments.train --model vgg11_bn --width 0.5 --epochs 12 --seed 0 --batch-size 128 \
        --lr 0.1 --threads 1 --channels-last --checkpoint checkpoints/vgg11_bn_w0.5_e12.ckpt \
        --resume --out src/onespike/assets/weights
fi
if [[ "$what" == fast_vgg ]]; then
    "$PY" -m onespike.experiments.train --model fast_vgg --recipe airbench --epochs 16 --seed 0 \
        --threads 1 --channels-last --checkpoint checkpoints/fast_vgg.ckpt --resume --no-progress \
        --out src/onespike/assets/weights
fi
if [[ "$what" == resnet20_e200 ]]; then
    "$PY" -m onespike.experiments.train --model resnet20 --epochs 200 --seed 0 --batch-size 128 --lr 0.1 \
        --channels-last --device "${DEVICE:-cuda}" --threads 1 --name resnet20_e200 \
        --checkpoint checkpoints/resnet20_e200.ckpt --resume --no-progress \
        --out src/onespike/assets/weights
fi
if [[ "$what" == vgg_gpu ]]; then  # the four GPU runs of docs/MODELS.md (not shipped)
    for spec in "fast_vgg_w128_e40 --widths 128,256,256 --epochs 40" "fast_vgg_e40 --epochs 40" \
        "fast_vgg_gpu_e16 --epochs 16" "fast_vgg_w128_e80 --widths 128,256,256 --epochs 80"; do
        set -- $spec
        name=$1
        shift
        "$PY" -m onespike.experiments.train --model fast_vgg --recipe airbench "$@" --seed 0 \
            --channels-last --device "${DEVICE:-cuda}" --amp --name "$name" --no-progress \
            --out checkpoints/gpu
    done
fi
if [[ "$what" == resnet20_e100 ]]; then
    "$PY" -m onespike.experiments.train --model resnet20 --epochs 100 --seed 0 --batch-size 128 --lr 0.1 \
        --threads 1 --channels-last --name resnet20_e100 --checkpoint checkpoints/resnet20_e100.ckpt \
        --resume --no-progress --out src/onespike/assets/weights
fi
