#!/usr/bin/env python3
"""Few-shot readers of new captcha styles: per style, per number of labelled images, per start.

    python bench/fewshot.py --styles plain,claptcha,wheezy,multicolor --n 50,100,300 \
        --starts scratch,general [--real PATH/captcha-hacker-2022] [--test 200] [--seed 0]

For each style (bench/make_style_sets.py draws them; `task1..3` are the competition's real images
from --real) it takes N labelled images to train on and --test other images of the style to score
on, trains a reader from each start (scratch: `experiment=auto_scratch`; general: `experiment=auto`, which
fine-tunes the packaged general reader; or a checkpoint path, `experiment=auto init_from=PATH`: a general reader pretrained
without that style, for the leave-one-style-out rows), and prints exact match with its 95 %
Wilson interval and the fine-tuning wall time (start-up included). The general reader zero-shot
(`predict.py ckpt=pretrained:general`, or --zero-shot CKPT; decoding narrowed to the style's characters) and
ddddocr 1.6.1 zero-shot read the same test images. The last lines are a markdown table.
"""
import argparse
import csv
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from captcha_lit.reading.report import wilson
from sets import labelled_folder, style_items

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--styles", default="plain,claptcha,wheezy,multicolor")
parser.add_argument("--n", default="50,100,300", help="labelled images to train on")
parser.add_argument("--starts", default="scratch,general", help="scratch, general, or checkpoint paths")
parser.add_argument("--real", help="the competition's labelled folder, for styles task1, task2, task3")
parser.add_argument("--test", type=int, default=200, help="new images of each style to score on")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--zero-shot", default="pretrained:general", help="the general reader read zero-shot (a checkpoint path: a candidate)")
parser.add_argument("--no-ddddocr", action="store_true")
parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every run")
args = parser.parse_args()
work = Path(tempfile.mkdtemp(prefix="fewshot-"))
def call(*command):
    """Runs a train.py or predict.py command; its output is shown only when it fails."""
    done = subprocess.run([sys.executable, *map(str, command)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def exact(predictions: Path, test: Path) -> int:
    with open(predictions) as f, open(test / "annotations.csv") as g:
        got = {r["filename"]: r["label"] for r in csv.DictReader(f)}
        return sum(got.get(r["filename"]) == r["label"] for r in csv.DictReader(g))


def cell(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}]"


rows = []
for style in args.styles.split(","):
    sizes = [int(n) for n in args.n.split(",")]
    items = style_items(style, max(sizes) + args.test, work, args.seed, args.real)
    test = labelled_folder(items[max(sizes):max(sizes) + args.test], work / style / "test")
    alphabet = "".join(sorted({c for _, label in items for c in label}))
    zero = {}
    if args.zero_shot != "pretrained:general" or (ROOT / "captcha_lit" / "pretrained" / "general.ckpt").is_file():
        call(ROOT / "predict.py", f"ckpt={args.zero_shot}", f"data_dir={test}", f"output={work / style / 'zero.csv'}",
             f"alphabet='{alphabet}'", "progress=false")
        zero["general"] = exact(work / style / "zero.csv", test)
    if not args.no_ddddocr:
        import ddddocr
        ocr = ddddocr.DdddOcr(show_ad=False)
        zero["ddddocr"] = sum(ocr.classification((test / f).read_bytes()).lower() == label.lower()  # case-folded
                              for f, label in (r for r in csv.reader(open(test / "annotations.csv")) if r[0] != "filename"))
    print(f"{style} zero-shot: " + ", ".join(f"{k} {cell(v, args.test)}" for k, v in zero.items()), flush=True)
    for n in sizes if args.starts else []:  # --starts "": zero-shot only
        train = labelled_folder(items[:n], work / style / f"train{n}")
        for start in args.starts.split(","):
            # scratch: experiment=auto_scratch; general: experiment=auto (the packaged general reader); a path: auto from it
            recipe = ["experiment=auto_scratch"] if start == "scratch" else \
                ["experiment=auto"] + ([] if start == "general" else [f"init_from={start}"])
            run = work / style / ("run%d-%s" % (n, re.sub(r"[^\w]", "_", start)))
            began = time.perf_counter()
            call(ROOT / "train.py", *recipe, f"data.root={train}", f"seed={args.seed}", f"hydra.run.dir={run}", "int8=false",
                 "trainer.enable_progress_bar=false", *args.overrides)
            wall = time.perf_counter() - began
            call(ROOT / "predict.py", f"ckpt={run}", f"data_dir={test}", f"output={run / 'test.csv'}", "progress=false")
            k = exact(run / "test.csv", test)
            rows.append((style, n, start, cell(k, args.test), f"{wall:.0f} s",
                         cell(zero["general"], args.test) if "general" in zero else "-",
                         cell(zero["ddddocr"], args.test) if "ddddocr" in zero else "-"))
            print(" | ".join(map(str, rows[-1])), flush=True)

print("\n| style | labelled | start | exact match [95 %] | fine-tuning | general zero-shot | ddddocr zero-shot |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(map(str, r)) + " |")
