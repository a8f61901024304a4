"""Fine-tune one uniform-window conversion with labels on the whole training split.

    python scripts/finetune_check.py mnist_cnn 2 0 1 docs/results/finetune_mnist_cnn_T2.json
    python scripts/finetune_check.py resnet20 8 7 2 docs/results/finetune_resnet20_T8_bc.json \
        --augment shift-flip --bias-correction

Arguments: a shipped image model (its sidecar's data set), window T, calibration seed
(1,000 training images), epochs, output JSON; options ``--lr``, ``--temperature``,
``--distill`` and ``--augment`` (``FinetuneConfig``'s) and ``--bias-correction``
(``convert``'s). Converts with the default search, measures the SNN on the whole test
split, runs ``onespike.finetune`` over the whole training split (a tenth held out) and
measures the result; the JSON has both accuracies and finetune's record (held-out
checks, the step kept and why).

``--checkpoint PATH`` makes a long run resumable: rerun the same command after a stop.

``--held-out-test N``: images the ANN was never trained on choose the step kept. A fixed
random N of the test images (permutation seed 0) are given to ``finetune(held_out=...)``
as its validation split, the whole training split is fitted, and every accuracy in the
output is measured on the **other** test images only (``test_images`` says how many).
"""

import argparse
import json
import time
from pathlib import Path

import torch

import onespike
from onespike.data import calibration_set, load_dataset
from onespike.experiments.train import evaluate
from onespike.models import load_pretrained, pretrained_info

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("name")
p.add_argument("T", type=int)
p.add_argument("seed", type=int)
p.add_argument("epochs", type=int)
p.add_argument("out")
p.add_argument("--lr", type=float, default=onespike.FinetuneConfig.lr)
p.add_argument("--temperature", type=float, default=onespike.FinetuneConfig.temperature)
p.add_argument("--distill", type=float, default=onespike.FinetuneConfig.distill)
p.add_argument("--augment", default="none", choices=["none", "shift-flip"])
p.add_argument(
    "--bias-correction", action="store_true", help="convert with bias_correction=True first"
)
p.add_argument("--held-out-test", type=int, default=0, metavar="N")
p.add_argument(
    "--checkpoint",
    metavar="PATH",
    help="finetune's checkpoint: rerunning the same command resumes from it (the converted "
    "network is kept beside it, PATH.snn.safetensors, so the resumed run starts from the same one)",
)
args = p.parse_args()
torch.set_num_threads(1)
name, T, seed, epochs, out = args.name, args.T, args.seed, args.epochs, args.out
ann = load_pretrained(name)
dataset = pretrained_info(name)["dataset"]
xc, _ = calibration_set(dataset, 1000, seed)
xtr, ytr = load_dataset(dataset, "train")
xt, yt = load_dataset(dataset, "test")
held_out = None
if args.held_out_test:
    perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))
    hold = perm[: args.held_out_test].sort().values
    rest = perm[args.held_out_test :].sort().values
    held_out = (xt[hold], yt[hold])
    xt, yt = xt[rest], yt[rest]
t0 = time.time()
cached = Path(f"{args.checkpoint}.snn.safetensors") if args.checkpoint else None
if cached is not None and cached.exists():
    snn = onespike.load(cached)
else:
    snn = onespike.convert(ann, xc, phases=T, progress=False, bias_correction=args.bias_correction)
    if cached is not None:
        onespike.save(snn, cached)
ann_acc = evaluate(ann, xt, yt)
acc0 = evaluate(snn, xt, yt)
print(f"ANN {ann_acc:.2f} SNN {acc0:.2f} loss {ann_acc - acc0:+.2f} ({time.time() - t0:.0f} s)")
t0 = time.time()
ft = onespike.finetune(
    snn,
    ann,
    (xtr, ytr),
    epochs=epochs,
    progress=False,
    seed=seed,
    lr=args.lr,
    temperature=args.temperature,
    distill=args.distill,
    augment=args.augment,
    held_out=held_out,
    checkpoint=args.checkpoint,
    resume=args.checkpoint is not None,
)
acc1 = evaluate(ft, xt, yt)
rec = ft.plan.search["finetune"]
print(f"finetuned {acc1:.2f} loss {ann_acc - acc1:+.2f} ({time.time() - t0:.0f} s)")
print(rec["kept_because"])
record = {"model": name, "dataset": dataset, "T": T, "seed": seed, "epochs": epochs}
record |= {"lr": args.lr, "temperature": args.temperature, "distill": args.distill}
record |= {"augment": args.augment, "bias_correction": args.bias_correction}
record |= {"held_out_test": args.held_out_test, "test_images": len(xt)}
record |= {"ann": ann_acc, "snn": acc0}
record |= {"finetuned": acc1, "record": rec}
with open(out, "w") as f:
    json.dump(record, f, indent=1, default=str)
