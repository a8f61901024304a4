#!/usr/bin/env bash
# Every CIFAR-10 figure of docs/RESULTS.md (issue 3), from the shipped weights.
# About 15-30 minutes per model and step on 2 CPU cores. Run from anywhere:
#   scripts/cifar_results.sh sweep resnet20        # conversion table over phases
#   scripts/cifar_results.sh ablation resnet20     # the search ablation at T = 6, 8, 12
#   scripts/cifar_results.sh merge                 # both models' sweeps: one table + plot
#   scripts/cifar_results.sh per-channel           # both models, per-channel scales, T=12,16
# (model: resnet20 | vgg11_bn_w0.5)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT=docs/results
case "$1" in
sweep)
    "$PY" -m onespike.cli sweep --model "$2" --phases 4,6,8,12,16,24,32 --subset random \
        --step-phases 8 --step-images 1000 --cost-images 1000 --json "$OUT/sweep_$2.json" --plot "$OUT/sweep_$2.png"
    ;;
ablation)
    "$PY" -m onespike.cli ablation --model "$2" --phases 6,8,12 --json "$OUT/ablation_$2.json"
    ;;
per-channel)
    "$PY" -m onespike.cli sweep --model resnet20 --model vgg11_bn_w0.5 --phases 12,16 \
        --per-channel --subset random --step-phases 0 --cost-images 1000 \
        --json "$OUT/sweep_cifar_per_channel.json" --plot "$OUT/sweep_cifar_per_channel.png"
    ;;
merge)
    "$PY" -m onespike.sweep "$OUT/sweep_resnet20.json" "$OUT/sweep_vgg11_bn_w0.5.json" \
        --layers 8 --json "$OUT/sweep_cifar.json" --plot "$OUT/sweep_cifar.png"
    ;;
*)
    echo "usage: $0 sweep|ablation MODEL | merge | per-channel" >&2
    exit 2
    ;;
esac
