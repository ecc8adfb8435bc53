"""Render a synthetic data set to disk in the competition's layout (annotations.csv +
taskN/*.png), so it can be inspected, shared, and trained on with data=folder."""
import contextlib
import os
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from ..errors import CaptchaError
from ..files import atomic_path, write_labels_csv
from ..data.images import IMAGE_SUFFIXES
from ..parallel import ordered_map
from ..data.render import Renderer
from ..data.seeded import sample_rng
from ..data.tasks import from_config
from .settings import check_settings


def _write_one(job):
    renderer, seed, task, i, out = job
    img, label = renderer.render(sample_rng(seed, f"generate-{task}", i))
    name = f"{task}/{i:06d}.png"
    with atomic_path(Path(out) / name) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return name, label


def generate(cfg: DictConfig) -> Path:
    """Renders into a new folder; an interrupted or failed run removes what it wrote: a complete
    folder or none."""
    check_settings(cfg, "generate")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise CaptchaError(f"out={out}: is a file; choose a new folder")
    if (out / "annotations.csv").exists() or (out.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES
                                                                   for p in out.rglob("*"))):
        raise CaptchaError(f"out={out}: already holds images or an annotations.csv; choose a new folder")
    jobs, made = [], []
    for key, task in cfg.tasks.items():
        n = cfg.num.get(key, 0)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise CaptchaError(f"num.{key}={n!r}: must be a whole number, 0 or more")
        try:
            task = from_config(task)  # a zero length, an empty alphabet: refused here
        except CaptchaError as e:  # named by the user's key: tasks.task1
            raise CaptchaError(f"tasks.{key}: {e}") from None
        renderer = Renderer(task.width, task.height, task.length, task.alphabet, cfg.font_sizes)
        jobs += [(renderer, cfg.seed, task.name, i, str(out)) for i in range(n)]
        made.append(out / task.name)
    processes = cfg.num_workers or os.cpu_count()
    writing = ordered_map(_write_one, jobs, processes, chunksize=64)
    try:
        rows = list(tqdm(writing, total=len(jobs), desc="writing", unit="img"))
        write_labels_csv(out / "annotations.csv", rows)  # last: a complete folder or none
    except BaseException:  # Ctrl-C and SIGTERM included: take back this run's images (the folder held none before)
        writing.close()  # the workers stop before their images are taken back
        for folder in made:
            for path in folder.glob("*.png"):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    print(f"wrote {len(rows)} images and {out / 'annotations.csv'}")
    return out
