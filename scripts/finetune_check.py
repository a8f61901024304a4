"""Fine-tune one uniform-window conversion with labels on the whole training split.

    python scripts/finetune_check.py resnet20_e200 8 0 2 docs/results/finetune_resnet20_e200_T8.json

Arguments: shipped CIFAR-10 model, window T, calibration seed (1,000 training images),
epochs, output JSON. Converts with the default search, measures the SNN on all 10,000
test images, runs ``onespike.finetune`` over the 50,000 training images (a tenth held
out) and measures the result; the JSON has both accuracies and finetune's record
(held-out checks, the step kept and why).
"""

import json
import sys
import time

import torch

import onespike
from onespike.data import calibration_set, load_dataset
from onespike.experiments.train import evaluate
from onespike.models import load_pretrained

torch.set_num_threads(1)
name, T, seed, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = sys.argv[5]
ann = load_pretrained(name)
xc, _ = calibration_set("cifar10", 1000, seed)
xtr, ytr = load_dataset("cifar10", "train")
xt, yt = load_dataset("cifar10", "test")
t0 = time.time()
snn = onespike.convert(ann, xc, phases=T, progress=False)
ann_acc = evaluate(ann, xt, yt)
acc0 = evaluate(snn, xt, yt)
print(f"ANN {ann_acc:.2f} SNN {acc0:.2f} loss {ann_acc - acc0:+.2f} ({time.time() - t0:.0f} s)")
t0 = time.time()
ft = onespike.finetune(snn, ann, (xtr, ytr), epochs=epochs, progress=False, seed=seed)
acc1 = evaluate(ft, xt, yt)
rec = ft.plan.search["finetune"]
print(f"finetuned {acc1:.2f} loss {ann_acc - acc1:+.2f} ({time.time() - t0:.0f} s)")
print(rec["kept_because"])
record = {"model": name, "T": T, "seed": seed, "epochs": epochs, "ann": ann_acc, "snn": acc0}
record |= {"finetuned": acc1, "record": rec}
with open(out, "w") as f:
    json.dump(record, f, indent=1, default=str)
