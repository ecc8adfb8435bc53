"""Render a synthetic data set to disk in the competition's layout (annotations.csv +
taskN/*.png), so it can be inspected, shared, and trained on with data=folder."""
import csv
import io
import os
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from .errors import CaptchaError
from .files import atomic_path, atomic_write_text
from .parallel import ordered_map
from .render import Renderer, sample_rng


def _write_one(job):
    renderer, seed, task, i, out = job
    img, label = renderer.render(sample_rng(seed, f"generate-{task}", i))
    name = f"{task}/{i:06d}.png"
    with atomic_path(Path(out) / name) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return name, label


def generate(cfg: DictConfig) -> Path:
    out = Path(cfg.out)
    if (out / "annotations.csv").exists():
        raise CaptchaError(f"out={out}: already holds an annotations.csv; choose a new folder")
    jobs = []
    for key, task in cfg.tasks.items():
        n = int(cfg.num.get(key, 0))
        if n < 0:
            raise CaptchaError(f"num.{key}={n}: must be 0 or more")
        renderer = Renderer(task.width, task.height, task.length, task.alphabet, cfg.font_sizes)
        (out / task.name).mkdir(parents=True, exist_ok=True)
        jobs += [(renderer, cfg.seed, task.name, i, str(out)) for i in range(n)]
    processes = cfg.num_workers or os.cpu_count()
    rows = list(tqdm(ordered_map(_write_one, jobs, processes, chunksize=64), total=len(jobs), desc="writing", unit="img"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filename", "label"])
    writer.writerows(rows)
    atomic_write_text(out / "annotations.csv", buffer.getvalue())  # last: a complete folder or none
    print(f"wrote {len(rows)} images and {out / 'annotations.csv'}")
    return out


if __name__ == "__main__":
    from .cli import generate as main
    main()
