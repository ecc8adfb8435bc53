"""Accuracy on labelled data: per-task metrics, a confusion-matrix picture and a grid of the
most confident mistakes, drawn with Pillow alone."""
import math

import numpy as np
from PIL import Image, ImageDraw

from ..data.alphabet import ALPHANUMERIC
from ..data.images import load_image


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of k successes in n."""
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return centre - half, centre + half


def accuracy(predictions: list[str], labels: list[str]) -> dict:
    chars = sum(len(t) for t in labels)
    char_hits = sum(p == t for pred, true in zip(predictions, labels) for p, t in zip(pred, true))
    exact = sum(p == t for p, t in zip(predictions, labels))
    return {"n": len(labels), "exact_match": exact / max(1, len(labels)), "char_acc": char_hits / max(1, chars)}


def confusion_picture(predictions, labels, alphabet: str = ALPHANUMERIC, cell: int = 14) -> Image.Image:
    """Rows: true character, columns: predicted; darker is more frequent (log scale)."""
    index = {c: i for i, c in enumerate(alphabet)}
    counts = np.zeros((len(alphabet), len(alphabet)))
    for pred, true in zip(predictions, labels):
        for p, t in zip(pred, true):
            if p in index and t in index:
                counts[index[t], index[p]] += 1
    shade = np.log1p(counts) / max(1e-9, np.log1p(counts).max())
    margin = cell + 4
    size = margin + cell * len(alphabet)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for i, c in enumerate(alphabet):
        draw.text((margin + i * cell + 3, 1), c, fill="black")
        draw.text((3, margin + i * cell + 1), c, fill="black")
        for j in range(len(alphabet)):
            level = int(255 * (1 - shade[i, j]))
            colour = (level, level, 255) if i == j else (255, level, level)  # blue: right, red: wrong
            draw.rectangle([margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1,
                            margin + (i + 1) * cell - 1], fill=colour)
    return img


def mistakes_picture(paths, predictions, labels, confidence, width: int, height: int, most: int = 32) -> Image.Image:
    """The `most` wrong predictions the model was surest of, each captioned 'predicted / true'."""
    wrong = [i for i, (p, t) in enumerate(zip(predictions, labels)) if p != t]
    wrong = sorted(wrong, key=lambda i: -confidence[i])[:most]
    cols = 8
    rows = max(1, -(-len(wrong) // cols))
    tile_h = height + 14
    grid = Image.new("RGB", (cols * width, rows * tile_h), "white")
    draw = ImageDraw.Draw(grid)
    for k, i in enumerate(wrong):
        x, y = (k % cols) * width, (k // cols) * tile_h
        grid.paste(Image.fromarray(load_image(paths[i], width, height)), (x, y))
        draw.text((x + 2, y + height + 1), f"{predictions[i]} / {labels[i]}", fill="red")
    if not wrong:
        draw.text((4, 4), "no mistakes", fill="black")
    return grid
