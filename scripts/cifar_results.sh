#!/usr/bin/env bash
# Every CIFAR-10 figure of docs/RESULTS.md (issue 3), from the shipped weights.
# About 15-40 minutes per model and step on 2 CPU cores. Run from anywhere:
#   scripts/cifar_results.sh sweep resnet20        # conversion table over phases (default search)
#   scripts/cifar_results.sh per-layer resnet20    # the same with one scale per layer
#   scripts/cifar_results.sh sweep-bc resnet20     # the same with bias_correction=True
#   scripts/cifar_results.sh ablation resnet20     # the search ablation at T = 6, 8, 12
#                                                  # (resumes a stopped run)
#   scripts/cifar_results.sh merge                 # both models' sweeps: one table + plot
#   scripts/cifar_results.sh merge NAME M1 M2 ...  # the same for other models, into sweep_NAME.*
#   scripts/cifar_results.sh refine fast_vgg_e24   # refinement at T = 8 and 12, three draws
#   scripts/cifar_results.sh lossless resnet20     # the smallest lossless window, three draws
#   scripts/cifar_results.sh frontier resnet20     # uniform / auto / refined / fine-tuned at
#                                                  # the latency of T = 8, three draws
#   scripts/cifar_results.sh all resnet20         # every step above whose JSON is missing
#                                                  # (hours; rerun to resume a stopped job)
# (model: any shipped CIFAR-10 model: resnet20 | fast_vgg_e24)
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT=docs/results
PHASES=4,6,8,12,16,24,32
# the sweep over PHASES of model $1 into sweep_$1$2.{json,png}, with the extra sweep options $3...
sweep() {
    local model="$1" suffix="$2"
    shift 2
    "$PY" -m onespike.cli sweep --model "$model" --phases "$PHASES" "$@" --subset random \
        --step-phases 8 --step-images 1000 --cost-images 1000 \
        --json "$OUT/sweep_$model$suffix.json" --plot "$OUT/sweep_$model$suffix.png"
}
if [ "${1:-}" = all ]; then
    # one step at a time, cheapest and most asked-for first; refine resumes per run
    [ -f "$OUT/sweep_$2.json" ] || "$SELF" sweep "$2"
    "$SELF" refine "$2"
    "$SELF" ablation "$2"  # resumes: keeps the variants a stopped run finished
    [ -f "$OUT/sweep_$2_per_layer.json" ] || "$SELF" per-layer "$2"
    "$SELF" lossless "$2"
    "$SELF" frontier "$2"
    exit 0
fi
case "${1:-}" in
sweep)
    sweep "$2" ""
    ;;
sweep-bc)
    sweep "$2" _bc --bias-correction
    ;;
per-layer)
    sweep "$2" _per_layer --per-layer
    ;;
ablation)
    "$PY" -m onespike.cli ablation --model "$2" --phases 6,8,12 --resume \
        --json "$OUT/ablation_$2.json"
    ;;
merge)
    name="${2:-cifar}"
    if [ $# -gt 2 ]; then models=("${@:3}"); else models=(resnet20 fast_vgg_e24); fi
    for v in "" _per_layer; do
        files=()
        for m in "${models[@]}"; do
            if [ -f "$OUT/sweep_$m$v.json" ]; then files+=("$OUT/sweep_$m$v.json"); fi
        done
        if [ ${#files[@]} -gt 0 ]; then
            "$PY" -m onespike.experiments.sweep "${files[@]}" \
                --layers 8 --json "$OUT/sweep_$name$v.json" --plot "$OUT/sweep_$name$v.png"
        fi
    done
    ;;
lossless)
    "$PY" scripts/lossless_window.py --model "$2" --phases 8,12,6,16,24 --seeds 0,7,11 \
        --threads 1 --json "$OUT/lossless_$2.json"
    ;;
frontier)
    # the VGG target has no fine-tuned column (issue 28): fine-tune ResNet-20 only
    case "$2" in fast_vgg*) ft=(--no-finetune) ;; *) ft=() ;; esac
    "$PY" scripts/frontier.py --model "$2" --phases 8 --seeds 0,7,11 --threads 1 "${ft[@]}" \
        --json "$OUT/frontier_$2.json" --plot "$OUT/frontier_$2.png"
    ;;
refine)
    "$PY" scripts/refine_results.py --model "$2" --phases 8,12 --seeds 0,7,11 --threads 1 \
        --json "$OUT/refine_$2.json"
    ;;
*)
    echo "usage: $0 sweep|sweep-bc|per-layer|ablation|refine|lossless|frontier|all MODEL | merge [NAME MODEL...]" >&2
    exit 2
    ;;
esac
