#!/usr/bin/env python3
"""The competition recipes scored by k-fold cross-validation on the labelled folder.

    python bench/kfold.py PATH/captcha-hacker-2022 [--tasks task2,task3] [--folds 5] [extra train.py overrides]

For each task and fold k it runs `python train.py experiment=kaggle_TASK data.test_fraction=1/K
data.fold=k`: fold k's test images (a fifth of the folder with 5 folds, disjoint across folds)
are never trained on nor picked by. It prints each fold's exact match and wall time, then per
task the images read right over all folds with the 95 % Wilson interval, and the mean of the folds.
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from captcha_lit.reading.report import wilson

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("root", help="the competition's labelled folder")
parser.add_argument("--tasks", default="task2,task3")
parser.add_argument("--folds", type=int, default=5)
parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every run")
args = parser.parse_intermixed_args()  # overrides may come after the options
work = Path(tempfile.mkdtemp(prefix="kfold-"))

table = []
for task in args.tasks.split(","):
    right = total = 0
    scores, walls = [], []
    for fold in range(args.folds):
        began = time.perf_counter()
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), f"experiment=kaggle_{task}",
                               f"data.root={args.root}", f"data.test_fraction={1 / args.folds}", f"data.fold={fold}",
                               f"hydra.run.dir={work / task / str(fold)}", "int8=false",
                               "trainer.enable_progress_bar=false", *args.overrides], capture_output=True, text=True)
        walls.append(time.perf_counter() - began)
        if done.returncode:
            sys.exit(done.stdout[-2000:] + done.stderr[-2000:])
        out = done.stdout + done.stderr
        n = int(re.search(r"(\d+) test\b", out).group(1))
        score = float(re.search(r"test/exact_match=([\d.]+)", out).group(1))
        right, total = right + round(score * n), total + n
        scores.append(score)
        print(f"{task} fold {fold}: {round(score * n)}/{n} = {score:.4f} in {walls[-1]:.0f} s", flush=True)
    lo, hi = wilson(right, total)
    table.append(f"| {task} | {args.folds} | {right}/{total} = **{right / total:.4f}** [{lo:.4f}, {hi:.4f}] | "
                 f"{sum(scores) / len(scores):.4f} ({min(scores):.4f} - {max(scores):.4f}) | {sum(walls) / len(walls):.0f} s |")

print("\n| task | folds | read right over all folds [95 %] | mean of the folds (range) | wall time per fold |\n|---|---|---|---|---|")
print("\n".join(table))
