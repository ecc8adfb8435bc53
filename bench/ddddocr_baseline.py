"""How well the pretrained ddddocr reader (pip install ddddocr==1.6.1) reads labelled captchas
zero-shot: the baseline an own-trained reader has to beat.

    python bench/ddddocr_baseline.py DIR [DIR ...]

Each DIR is a labelled folder in any layout captcha-lit reads (label-named images, or
annotations.csv). Prints exact match per folder, case-sensitive and case-folded, and ends with
`ddddocr exact: X` for the first folder.
"""
import argparse
import time

import ddddocr

from captcha_lit.data.folders import labelled_items

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("dirs", nargs="+")
args = parser.parse_args()

ocr = ddddocr.DdddOcr(show_ad=False)
first = None
for folder in args.dirs:
    items, layout = labelled_items(folder)
    start = time.perf_counter()
    reads = [ocr.classification(path.read_bytes()) for path, _, _ in items]
    seconds = time.perf_counter() - start
    exact = sum(r == label for r, (_, label, _) in zip(reads, items)) / len(items)
    folded = sum(r.lower() == label.lower() for r, (_, label, _) in zip(reads, items)) / len(items)
    print(f"{folder}: n={len(items)} exact={exact:.4f} case-folded={folded:.4f} ({seconds / len(items) * 1000:.1f} ms/image)")
    first = exact if first is None else first
print(f"ddddocr exact: {first:.4f}")
