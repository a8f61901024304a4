#!/usr/bin/env bash
# Every CIFAR-10 figure of docs/RESULTS.md (issue 3), from the shipped weights.
# About 15-40 minutes per model and step on 2 CPU cores. Run from anywhere:
#   scripts/cifar_results.sh sweep resnet20        # conversion table over phases (default search)
#   scripts/cifar_results.sh per-layer resnet20    # the same with one scale per layer
#   scripts/cifar_results.sh ablation resnet20     # the search ablation at T = 6, 8, 12
#   scripts/cifar_results.sh merge                 # both models' sweeps: one table + plot
# (model: resnet20 | vgg11_bn_w0.5)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT=docs/results
PHASES=4,6,8,12,16,24,32
case "$1" in
sweep)
    "$PY" -m onespike.cli sweep --model "$2" --phases "$PHASES" --subset random \
        --step-phases 8 --step-images 1000 --cost-images 1000 --json "$OUT/sweep_$2.json" --plot "$OUT/sweep_$2.png"
    ;;
per-layer)
    "$PY" -m onespike.cli sweep --model "$2" --phases "$PHASES" --per-layer --subset random \
        --step-phases 8 --step-images 1000 --cost-images 1000 \
        --json "$OUT/sweep_$2_per_layer.json" --plot "$OUT/sweep_$2_per_layer.png"
    ;;
ablation)
    "$PY" -m onespike.cli ablation --model "$2" --phases 6,8,12 --json "$OUT/ablation_$2.json"
    ;;
merge)
    for v in "" _per_layer; do
        "$PY" -m onespike.experiments.sweep "$OUT/sweep_resnet20$v.json" "$OUT/sweep_vgg11_bn_w0.5$v.json" \
            --layers 8 --json "$OUT/sweep_cifar$v.json" --plot "$OUT/sweep_cifar$v.png"
    done
    ;;
*)
    echo "usage: $0 sweep|per-layer|ablation MODEL | merge" >&2
    exit 2
    ;;
esac
