"""Shared helpers: compose configs like train.py does, and make small data on the fly."""
import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from captcha_lit.render import Renderer, sample_rng

CONF = str(Path(__file__).resolve().parents[1] / "conf")
ROOT = Path(__file__).resolve().parents[1]

# a narrow network and few images: every test config trains in seconds on a CPU
TINY = ["model.widths=[16,16,32,32]", "task.num_train=256", "data.num_val=64", "task.batch_size=32",
        "task.epochs=1", "data.num_workers=0", "trainer.enable_progress_bar=false", "logger=csv"]


def compose_cfg(name: str, overrides=(), output_dir=None):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    if output_dir is not None:
        cfg.output_dir = str(output_dir)
    return cfg


def make_folder(root: Path, counts: dict, seed: int = 0, extra_rows=(), size=None) -> Path:
    """A competition-style folder: annotations.csv + taskN/*.png, rendered with ImageCaptcha."""
    specs = {"task1": (1, "0123456789", 72, 72), "task2": (2, "0123456789abcdefghijklmnopqrstuvwxyz", 72, 72),
             "task3": (4, "0123456789abcdefghijklmnopqrstuvwxyz", 96, 72)}
    rows = []
    for task, n in counts.items():
        length, alphabet, w, h = specs[task]
        renderer = Renderer(w, h, length, alphabet)
        (root / task).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = renderer.render(sample_rng(seed, task, i))
            name = f"{task}/{i:05d}.png"
            Image.fromarray(img).resize(size or (w, h)).save(root / name)
            rows.append((name, label))
    with open(root / "annotations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows(rows + list(extra_rows))
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data", {"task1": 40, "task2": 30, "task3": 30})
