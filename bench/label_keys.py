#!/usr/bin/env python3
"""Keys per image for labelling with captcha-label, as if a person typed the true labels.

    python bench/label_keys.py --style task3 --real PATH/captcha-hacker-2022 [--n 300] [--first 100] \
        [--alphabet digits+lower] [--fold-case] [--lengths 4] [final=true]

The page types the reader's guess in and selects it: a right guess costs one key (Enter), a
wrong one is typed over (the label's characters, then Enter). Without a reader every label is
typed. Over the style's first --n images (bench/sets.py draws them as bench/fewshot.py does) it
counts the keys with the packaged general reader's guesses, and for the loop the README shows:
the general reader's guesses for the first --first images, `python train.py experiment=auto` on
them, then that reader's guesses for the rest. --alphabet, --fold-case and --lengths are
captcha-label's own options (the characters the site uses, and how many); with --lengths, the rows
without it too.
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from captcha_lit.reading.reader import CaptchaReader
from sets import labelled_folder, style_items

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--style", default="task3", help="plain, claptcha, wheezy, multicolor, task1, task2 or task3")
parser.add_argument("--real", help="the competition's labelled folder, for styles task1, task2, task3")
parser.add_argument("--n", type=int, default=300, help="images to label")
parser.add_argument("--first", type=int, default=100, help="labelled before training the style's own reader")
parser.add_argument("--alphabet", default=None, help="captcha-label's alphabet=: the characters to guess")
parser.add_argument("--fold-case", action="store_true")
parser.add_argument("--lengths", default=None, help="captcha-label's lengths=: 4, or 4-6")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("overrides", nargs="*", help="extra train.py overrides for the loop's training (final=true)")
args = parser.parse_args()
work = Path(tempfile.mkdtemp(prefix="label-keys-"))


def keys(guesses, labels) -> list[int]:
    """Enter for a right guess; the label typed over a wrong one, then Enter. With --fold-case
    the guesses are lower case, and so is what the site accepts."""
    fold = str.lower if args.fold_case else str
    return [1 if g is not None and fold(g) == fold(t) else len(t) + 1 for g, t in zip(guesses, labels)]


def guesses(model, paths, allowed, lengths=None) -> list[str]:
    reader = CaptchaReader.from_checkpoint(model, allowed=allowed, fold_case=args.fold_case, lengths=lengths)
    return reader.predict(paths)[0]


items = style_items(args.style, args.n, work, args.seed, args.real)
paths, labels = [p for p, _ in items], [label for _, label in items]
typed = keys([None] * len(labels), labels)
tried = [None, args.lengths] if args.lengths else [None]
general = {n: keys(guesses("pretrained:general", paths, args.alphabet, n), labels) for n in tried}

began = time.perf_counter()
run = work / "run"
done = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=auto", f"seed={args.seed}", f"hydra.run.dir={run}",
                       f"data.root={labelled_folder(items[:args.first], work / 'first')}", "int8=false",
                       "trainer.enable_progress_bar=false", *args.overrides], capture_output=True, text=True)
if done.returncode:
    sys.exit(f"train.py failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
trained = time.perf_counter() - began
# the style's own reader reads only the characters of its training labels: nothing to narrow
own = run / "checkpoints" / "last.ckpt"
loop = {n: general[n][:args.first] + keys(guesses(own, paths[args.first:], None, n), labels[args.first:]) for n in tried}


def line(name, k):
    right = sum(x == 1 for x in k)
    return f"| {name} | {sum(k) / len(k):.2f} | {right / len(k):.3f} | {sum(k)} |"


print(f"\n{args.style}: {len(labels)} images, alphabet={args.alphabet}, fold_case={args.fold_case}; "
      f"the reader of the first {args.first} trained in {trained:.0f} s")
print("| guesses | keys per image | guesses accepted | keys |\n|---|---|---|---|")
print(line("none (every label typed)", typed))
for n in tried:
    told = f", lengths={n}" if n else ""
    print(line(f"general reader{told}", general[n]))
    print(line(f"general reader, then experiment=auto on the first {args.first}{told}", loop[n]))
