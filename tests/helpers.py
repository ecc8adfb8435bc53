"""Shared test helpers: compose configs like train.py does, and make small labelled data."""
import csv
from pathlib import Path

from hydra import compose, initialize_config_dir
from PIL import Image

from captcha_lit.data.render import Renderer
from captcha_lit.data.seeded import sample_rng
from captcha_lit.data.tasks import CONF_DIR, preset

CONF = str(CONF_DIR)
ROOT = Path(__file__).resolve().parents[1]

# a narrow network and few images: every test config trains in seconds on a CPU
TINY = ["model.widths=[16,16,32,32]", "data.num_train=256", "data.num_val=64", "data.batch_size=32",
        "trainer.max_epochs=1", "data.num_workers=0", "trainer.enable_progress_bar=false", "logger=csv", "int8=false"]


def module_args(name: str) -> dict:
    """A preset task as CaptchaModule's arguments."""
    task = preset(name)
    return dict(task=task.config())


def compose_cfg(name: str, overrides=(), output_dir=None):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    if output_dir is not None:
        cfg.output_dir = str(output_dir)
    return cfg


def make_folder(root: Path, counts: dict, seed: int = 0, extra_rows=(), size=None) -> Path:
    """A competition-style folder: annotations.csv + taskN/*.png, rendered with ImageCaptcha."""
    rows = []
    for name, n in counts.items():
        task = preset(name)
        renderer = Renderer(task.width, task.height, task.length, task.alphabet)
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = renderer.render(sample_rng(seed, name, i))
            filename = f"{name}/{i:05d}.png"
            Image.fromarray(img).resize(size or (task.width, task.height)).save(root / filename)
            rows.append((filename, label))
    write_csv(root, rows + list(extra_rows))
    return root


def make_named_folder(root: Path, n: int, length, alphabet: str, width: int, height: int, seed: int = 0,
                      style: str = "imagecaptcha") -> Path:
    """A folder of images named by their labels (LABEL.png, LABEL_2.png for a repeat)."""
    renderer = Renderer(width, height, length, alphabet, style=style)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, label = renderer.render(sample_rng(seed, "named", i))
        path, k = root / f"{label}.png", 1
        while path.exists():
            k += 1
            path = root / f"{label}_{k}.png"
        Image.fromarray(img).save(path)
    return root


def write_csv(root: Path, rows) -> None:
    with open(root / "annotations.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)
