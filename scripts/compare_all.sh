#!/usr/bin/env bash
# Every figure of docs/COMPARE.md: onespike against the other spike codes on each shipped
# model, then the SpikingJelly peer benchmark. One thread; run from anywhere.
#
#   scripts/compare_all.sh            # MNIST CNN (2000 test images), GCNs, peer benchmark
#   SJ_PATH=/tmp/sj scripts/compare_all.sh   # where SpikingJelly was installed (see
#                                            # benchmarks/peer_spikingjelly.py)
#   WITH_RESNET=1 scripts/compare_all.sh     # also ResNet-20 on CIFAR-10 (a fixed random
#                                            # 1,000 test images, every code and the
#                                            # refined phase code at T = 4, 6, 8, 12: about
#                                            # 1.5 hours more on a free core, see COMPARE.md)
#   CIFAR_MODELS="resnet20 fast_vgg_e24" scripts/compare_all.sh   # these CIFAR-10 models
#                                            # instead (same settings; each about as long)
#   ONLY=cifar CIFAR_MODELS=fast_vgg_e24 scripts/compare_all.sh  # only the CIFAR-10 models,
#                                            # then the tables of every JSON there
#
# On two free cores a CIFAR-10 model's codes can run in two processes: a second
# `onespike compare` with the same settings, `--codes a,b --prefix <model>_part2`, then the
# main one with `--merge docs/results/compare/<model>_part2.json`, which takes the codes
# the second finished as done (docs/COMPARE.md, "How the runs were made").
#
# Outputs: docs/results/compare/<model>_<dataset>.json and three PNGs each,
# docs/results/compare/peer_spikingjelly.{json,txt}, and the Markdown tables printed by
# `python -m onespike.experiments.compare docs/results/compare/*.json` (pasted into docs/COMPARE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT=docs/results/compare
ERR="${TMPDIR:-/tmp}/compare_all.err"  # progress bars and warnings
mkdir -p "$OUT"
: > "$ERR"

if [ "${ONLY:-}" != cifar ]; then
# MNIST CNN: the first 2000 test images (all codes up to 256 steps took about
# 40 minutes on one loaded core; the full 10k set would take over three hours).
"$PY" -m onespike.cli compare --model mnist_cnn --dataset mnist --test 2000 --threads 1 \
    --out "$OUT" --prefix mnist_cnn_mnist 2>>"$ERR" | tee "$OUT/mnist_cnn_mnist.txt"

# GCNs (whole graph, scored on the 1000 test nodes): cheap.
for m in gcn gcn_res; do
    for d in cora citeseer; do
        "$PY" -m onespike.cli compare --model "$m" --dataset "$d" --threads 1 \
            --out "$OUT" --prefix "${m}_${d}" 2>>"$ERR" | tee "$OUT/${m}_${d}.txt"
    done
done

fi

# CIFAR-10 models (ResNet-20 when WITH_RESNET=1, or those named in CIFAR_MODELS): a fixed random 1,000 test
# images (seed 0; the test set is stored sorted by class; about 16x the MNIST CNN's MACs
# per image), every code including onespike-refined (refined at T = 4, 6, 8, 12, the
# default --refine-phases; each reuses the onespike row's conversion at that T). Hours:
# --resume keeps the codes a stopped run finished (its JSON is rewritten after each code).
cifar_models="${CIFAR_MODELS:-}"
if [ -z "$cifar_models" ] && [ "${WITH_RESNET:-0}" = 1 ]; then cifar_models=resnet20; fi
for m in $cifar_models; do
    "$PY" -m onespike.cli compare --model "$m" --dataset cifar10 --test 1000 --subset random \
        --codes all --threads 1 --resume \
        --out "$OUT" --prefix "${m}_cifar10_1000" 2>>"$ERR" | tee "$OUT/${m}_cifar10_1000.txt"
done

if [ "${ONLY:-}" != cifar ]; then
# The peer: SpikingJelly's ann2snn (exits 0 with a message when it is not importable).
PYTHONPATH="${SJ_PATH:-}" "$PY" benchmarks/peer_spikingjelly.py --images 2000 \
    --json "$OUT/peer_spikingjelly.json" 2>>"$ERR" | tee "$OUT/peer_spikingjelly.txt"
fi

shopt -s nullglob
# (the *_part<N>.json of a run split over processes are in their main JSON once merged)
"$PY" -m onespike.experiments.compare "$OUT"/mnist_cnn_*.json "$OUT"/gcn*_*.json "$OUT"/*_cifar10_1000.json \
    | tee "$OUT/tables.md"
