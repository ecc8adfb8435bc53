"""What final training, ensembles and test-time views add, on the test split of real images.

    python bench/ensemble_tta.py RUN_A RUN_B [--tta 1 4 8]

RUN_A and RUN_B are run folders of one task trained with the same data.root, seed and
data.test_fraction, so they share a test split that neither trained on nor picked a checkpoint
by (the split draws the test images first; see datasets.split). Typically RUN_A picks its best
epoch on validation and RUN_B is the same recipe with final=true. Prints, per reader, exact match
on that test split with its 95 % interval and the reading time per image (median of --rounds,
in-memory images, this machine's default precision).
"""
import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from captcha_lit.data.datasets import split
from captcha_lit.data.folders import read_labelled
from captcha_lit.data.images import load_image
from captcha_lit.commands.predict import run_checkpoint
from captcha_lit.reading.reader import CaptchaReader
from captcha_lit.reading.report import wilson
from captcha_lit.data.tasks import from_config

parser = argparse.ArgumentParser()
parser.add_argument("runs", nargs=2, type=Path)
parser.add_argument("--tta", nargs="+", type=int, default=[1, 4, 8], help="views per image (CTC models take at most 5)")
parser.add_argument("--rounds", type=int, default=3)
args = parser.parse_args()



configs = [OmegaConf.load(run / "config.yaml") for run in args.runs]
keys = [(c.data.root, c.data.seed, c.data.test_fraction, c.data.get("fold"), dict(c.task)) for c in configs]
assert keys[0] == keys[1] and configs[0].data.test_fraction > 0, "the runs must share data.root, seed and a test split"
cfg = configs[0]
task = from_config(cfg.task)
items = read_labelled(cfg.data.root, task)
_, _, test = split(len(items), cfg.data.val_fraction, cfg.data.seed, cfg.data.test_fraction, cfg.data.get("fold"))
images = np.stack([load_image(items[i][0], task.width, task.height) for i in test])
labels = [items[i][1] for i in test]
ckpts = [run_checkpoint(run) for run in args.runs]
print(f"{task.name}: {len(test)} test images of {len(items)}; A = {ckpts[0]}, B = {ckpts[1]}")

readers = {}
head = CaptchaReader.from_checkpoint(ckpts[0]).spec.head
for views in sorted({min(v, 5) if head == "ctc" else v for v in args.tta}):  # a CTC reader's views: 5 vertical shifts
    a, b = (CaptchaReader.from_checkpoint(c, tta=views) for c in ckpts)
    suffix = f", tta={views}" if views > 1 else ""
    readers[f"A{suffix}"], readers[f"B{suffix}"] = a, b
    readers[f"A+B ensemble{suffix}"] = CaptchaReader.ensemble([a, b])
for r in readers.values():
    r.read(images[:8])  # warm-up
seconds = {k: [] for k in readers}
read = {}
for _ in range(args.rounds):
    for name, r in readers.items():
        t0 = time.perf_counter()
        read[name] = r.read(images)
        seconds[name].append(time.perf_counter() - t0)
print(f"{'reader':<24}{'exact':>8}{'95% interval':>18}{'ms/image':>10}")
for name in readers:
    k = sum(a == b for a, b in zip(read[name], labels))
    lo, hi = wilson(k, len(labels))
    print(f"{name:<24}{k / len(labels):>8.4f}   [{lo:.4f}, {hi:.4f}]{1000 * statistics.median(seconds[name]) / len(labels):>10.2f}")
