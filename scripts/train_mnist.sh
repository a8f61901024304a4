#!/usr/bin/env bash
# Re-train the shipped MNIST CNN (src/onespike/assets/weights/mnist_cnn.{pt,json}).
# One thread, about 4 minutes on a laptop-class CPU core; run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
exec "$PY" -m onespike.experiments.train --model mnist_cnn --epochs 6 --seed 0 --batch-size 128 --lr 0.05 \
    --threads 1 --out src/onespike/assets/weights "$@"
