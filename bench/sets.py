"""Labelled sets for the benchmarks: styles drawn by make_style_sets.py, or the competition's
real images, and labelled folders (annotations.csv + copies) made of some of their images."""
import csv
import random
import shutil
import subprocess
import sys
from pathlib import Path

from captcha_lit.data.folders import labelled_items

HERE = Path(__file__).resolve().parent
STYLE_NAMES = {"plain": "simple"}  # make_style_sets.py's name for the plain Pillow style
REAL = ("task1", "task2", "task3")


def style_items(style: str, count: int, work: Path, seed: int = 0, real=None) -> list[tuple[Path, str]]:
    """`count` labelled images of the style, shuffled by random.Random(seed): drawn by
    make_style_sets.py into work/, or the real task images of the competition's folder `real`."""
    if style in REAL:
        if real is None:
            raise SystemExit(f"style {style}: give --real PATH/captcha-hacker-2022")
        items, _ = labelled_items(real, style)
    else:
        out, name = Path(work) / "styles", STYLE_NAMES.get(style, style)
        if not (out / name).is_dir():
            subprocess.run([sys.executable, str(HERE / "make_style_sets.py"), "--out", str(out), "--n", str(count),
                            "--seed", str(seed), "--styles", name, "--no-sheets"], check=True)
        items, _ = labelled_items(out / name)
    # the drawn sets are named by their labels, so file order is label order: unshuffled, the training
    # images' labels would all start with the first characters of the alphabet and the test images' with the last
    items = [(p, label) for p, label, _ in items]
    random.Random(seed).shuffle(items)
    return items[:count]


def labelled_folder(items, path: Path) -> Path:
    """A labelled folder (annotations.csv) of copies of `items`."""
    path.mkdir(parents=True)
    with open(path / "annotations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        for i, (image, label) in enumerate(items):
            shutil.copyfile(image, path / f"{i:05d}{image.suffix}")
            writer.writerow([f"{i:05d}{image.suffix}", label])
    return path
