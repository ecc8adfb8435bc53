"""Datasets (rendered captchas, a competition-style folder) and the LightningDataModule.

Images travel as uint8 (B, 3, H, W) tensors; the LightningModule scales and normalises them
on the device, so the data path moves a quarter of the bytes of float32.
"""
import csv
import hashlib
import logging
import multiprocessing as mp
import os
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from tqdm import tqdm

from .alphabet import encode, label_problem
from .errors import CaptchaError
from .io import atomic_path
from .render import Renderer, sample_rng

log = logging.getLogger(__name__)

TASK_LENGTHS = {"task1": 1, "task2": 2, "task3": 4}


# ---------------------------------------------------------------- reading images and folders
def load_image(path, width: int, height: int) -> np.ndarray:
    """Any image file as (H, W, 3) uint8 RGB: grayscale (8- or 16-bit), RGBA and palette images are
    converted, and images of another size are resized to width x height."""
    try:
        with Image.open(path) as img:
            if img.mode.startswith("I;16"):  # 16-bit grayscale: convert() would clip it to white
                img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
            img = img.convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise CaptchaError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CaptchaError(f"{path}: not a readable image ({e})") from None


def read_csv_rows(csv_path: Path) -> list[tuple[int, str, str]]:
    """(line number, filename, label) for each row of a `filename,label` CSV."""
    if not csv_path.is_file():
        raise CaptchaError(f"{csv_path}: file not found")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: skips a spreadsheet's byte order mark
            lines = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise CaptchaError(f"{csv_path}: not a UTF-8 CSV file ({e}); save it as CSV UTF-8 with the header "
                           f"'filename,label'") from None
    if not lines:
        raise CaptchaError(f"{csv_path}: the file is empty; expected the header 'filename,label'")
    header = [h.strip() for h in lines[0]]
    if header != ["filename", "label"]:
        raise CaptchaError(f"{csv_path}: the first line must be the header 'filename,label', found {','.join(lines[0])!r}")
    rows = []
    for lineno, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue  # blank line
        if len(fields) != 2:
            raise CaptchaError(f"{csv_path}, line {lineno}: expected 2 fields (filename,label), found {len(fields)}")
        rows.append((lineno, fields[0].strip(), fields[1].strip()))
    return rows


def read_annotations(root, task: str, length: int, alphabet: str) -> list[tuple[str, str]]:
    """The (image path, label) pairs of one task in a competition-style folder.

    Rows of other tasks are ignored; rows whose label does not fit the task (length, characters)
    and exact duplicate rows are dropped and counted in a warning. A file listed twice with two
    different labels, a missing image or a task with no rows is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise CaptchaError(f"data.root={root}: no such folder")
    csv_path = root / "annotations.csv"
    kept, seen, dropped = [], {}, Counter()
    first_drop = {}
    tasks_found = Counter()
    for lineno, filename, label in read_csv_rows(csv_path):
        tasks_found[filename.split("/")[0]] += 1
        if not filename.startswith(f"{task}/"):
            continue
        if filename in seen:
            if seen[filename][1] != label:
                raise CaptchaError(f"{csv_path}, lines {seen[filename][0]} and {lineno}: {filename} is labelled "
                                   f"both {seen[filename][1]!r} and {label!r}")
            dropped["duplicate"] += 1
            continue
        seen[filename] = (lineno, label)
        problem = label_problem(label, length, alphabet)
        if problem:
            dropped["wrong length" if problem.startswith("length") else "characters outside the alphabet"] += 1
            first_drop.setdefault(problem, f"line {lineno} ({filename}, {label!r}): {problem}")
            continue
        path = root / filename
        if not path.is_file():
            raise CaptchaError(f"{csv_path}, line {lineno}: image {path} not found")
        kept.append((str(path), label))
    if dropped:
        examples = "; ".join(list(first_drop.values())[:3])
        log.warning(f"{csv_path}: dropped {sum(dropped.values())} {task} rows "
                    f"({', '.join(f'{n} {why}' for why, n in dropped.items())}); e.g. {examples}")
    if not kept:
        found = ", ".join(f"{t}: {n}" for t, n in sorted(tasks_found.items())) or "none"
        raise CaptchaError(f"{csv_path}: no usable rows of {task} (rows per folder prefix: {found})")
    return kept


# ---------------------------------------------------------------- datasets
class RenderedDataset(Dataset):
    """`size` ImageCaptcha images; image i is the same for the same (seed, stream, i)."""

    def __init__(self, renderer: Renderer, size: int, seed: int, stream: str):
        self.renderer, self.size, self.seed, self.stream = renderer, size, seed, stream

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        img, label = self.renderer.render(sample_rng(self.seed, self.stream, i))
        return img, encode(label, self.renderer.alphabet)


class FolderDataset(Dataset):
    def __init__(self, items: list[tuple[str, str]], width: int, height: int, alphabet: str):
        self.items, self.width, self.height, self.alphabet = items, width, height, alphabet

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return load_image(path, self.width, self.height), encode(label, self.alphabet)


class ArrayDataset(Dataset):
    """Images and targets held in arrays (in memory or memory-mapped). Indexed with a list of
    indices it returns a whole batch in one gather, which is what lets it feed a GPU."""

    def __init__(self, images: np.ndarray, targets: np.ndarray):
        self.images, self.targets = images, targets

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        idx = np.sort(np.asarray(idx)) if isinstance(idx, list) else idx  # sorted reads are memmap-friendly
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        return x.movedim(-1, -3), torch.from_numpy(np.asarray(self.targets[idx], dtype=np.int64))


def _fetch(args):
    dataset, i = args
    try:
        return dataset[i]
    except CaptchaError as e:
        # returned, not raised: a Pool torn down while its workers still hold results can hang
        # (Pool.terminate() waits on a queue lock that a blocked worker holds)
        return e


def materialize(dataset: Dataset, processes: int, desc: str) -> ArrayDataset:
    """Reads every item of `dataset` once, on `processes` cores, into arrays. A bad item
    (an unreadable image) stops it with that item's error once every item has been read."""
    first_img, first_target = dataset[0]
    images = np.empty((len(dataset), *first_img.shape), np.uint8)
    targets = np.empty((len(dataset), len(first_target)), np.int64)
    jobs = ((dataset, i) for i in range(len(dataset)))
    bar = dict(total=len(dataset), desc=desc, unit="img", disable=len(dataset) < 2000, leave=False)
    parallel = processes > 1 and len(dataset) >= 1000
    error = None
    with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(processes) if parallel else nullcontext() as pool:
        results = pool.imap(_fetch, jobs, chunksize=64) if parallel else map(_fetch, jobs)
        for i, item in enumerate(tqdm(results, **bar)):  # drained to the end: the pool closes idle
            if isinstance(item, CaptchaError):
                error = error or item
            else:
                images[i], targets[i] = item
    if error is not None:
        raise error
    return ArrayDataset(images, targets)


def cached(dataset: RenderedDataset, cache_dir, processes: int) -> ArrayDataset:
    """Renders `dataset` once into `cache_dir` as .npy files and memory-maps them on later runs."""
    r = dataset.renderer
    key = f"{r.width}x{r.height}-{r.length}-{r.alphabet}-{r.font_sizes}-{r.style}-{dataset.seed}-{dataset.stream}-{dataset.size}"
    name = hashlib.sha1(key.encode()).hexdigest()[:16]
    img_path, tgt_path = Path(cache_dir) / f"{name}-images.npy", Path(cache_dir) / f"{name}-targets.npy"
    if not (img_path.exists() and tgt_path.exists()):
        arrays = materialize(dataset, processes, f"rendering {dataset.stream}")
        for path, array in ((tgt_path, arrays.targets), (img_path, arrays.images)):
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, array)
    return ArrayDataset(np.load(img_path, mmap_mode="r"), np.load(tgt_path))


def concat(a: Dataset, b: Dataset) -> Dataset:
    if isinstance(a, ArrayDataset) and isinstance(b, ArrayDataset):
        return ArrayDataset(np.concatenate([a.images, b.images]), np.concatenate([a.targets, b.targets]))
    return torch.utils.data.ConcatDataset([a, b])


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A train/validation split of range(n) fixed by the seed."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ---------------------------------------------------------------- the datamodule
class CaptchaDataModule(pl.LightningDataModule):
    """Train/val/test data for one task.

    source: "synthetic" (ImageCaptcha), "kaggle" (a competition-style folder at `root`) or
    "mixed" (the folder's training split plus `synthetic_ratio` rendered images per real one;
    validation and test stay real).
    """

    def __init__(self, task: str, length: int, alphabet: str, width: int, height: int,
                 source: str = "synthetic", root: str | None = None, num_train: int = 20000,
                 num_val: int = 1000, synthetic_ratio: float = 1.0, val_fraction: float = 0.15,
                 batch_size: int = 128, seed: int = 0, materialize: bool = True, cache_dir: str | None = None,
                 num_workers: int | None = None, pin_memory: bool | None = None, font_sizes=None,
                 style: str = "imagecaptcha"):
        super().__init__()
        if source not in ("synthetic", "kaggle", "mixed"):
            raise CaptchaError(f"data.source={source!r}: choose synthetic, kaggle or mixed")
        if source != "synthetic" and not root:
            raise CaptchaError(f"data={source} needs the folder: add data.root=PATH")
        if source != "synthetic" and not Path(root).is_dir():
            raise CaptchaError(f"data.root={root}: no such folder")
        if batch_size < 1:
            raise CaptchaError(f"data.batch_size={batch_size}: must be at least 1")
        self.task, self.length, self.alphabet, self.width, self.height = task, length, alphabet, width, height
        self.source, self.root, self.num_train, self.num_val = source, root, num_train, num_val
        self.synthetic_ratio, self.val_fraction, self.batch_size, self.seed = synthetic_ratio, val_fraction, batch_size, seed
        self.materialize, self.cache_dir = materialize, cache_dir
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.num_workers = os.cpu_count() if num_workers is None else num_workers
        self.renderer = Renderer(width, height, length, alphabet, font_sizes, style)
        self.train_set = self.val_set = self.test_set = None

    def _rendered(self, size: int, stream: str):
        ds = RenderedDataset(self.renderer, size, self.seed, stream)
        if not self.materialize:
            return ds
        if self.cache_dir:
            return cached(ds, self.cache_dir, self.num_workers or 1)
        return materialize(ds, self.num_workers or 1, f"rendering {stream}")

    def _folder(self, items):
        ds = FolderDataset(items, self.width, self.height, self.alphabet)
        return materialize(ds, self.num_workers or 1, "loading images") if self.materialize else ds

    def setup(self, stage: str | None = None):
        if self.val_set is not None:
            return
        if self.source == "synthetic":
            self.train_set = self._rendered(self.num_train, "train")
            self.val_set = self._rendered(self.num_val, "val")
            self.test_set = self._rendered(self.num_val, "test")
            return
        items = read_annotations(self.root, self.task, self.length, self.alphabet)
        train_idx, val_idx = split(len(items), self.val_fraction, self.seed)
        if len(train_idx) == 0:
            raise CaptchaError(f"{Path(self.root) / 'annotations.csv'}: {len(items)} usable {self.task} row(s) leave "
                               f"none to train on after the validation split: add images or lower "
                               f"data.val_fraction={self.val_fraction}")
        self.train_set = self._folder([items[i] for i in train_idx])
        self.val_set = self.test_set = self._folder([items[i] for i in val_idx])  # the folder's held-out split
        if self.source == "mixed":
            n_synth = round(self.synthetic_ratio * len(train_idx))
            self.train_set = concat(self.train_set, self._rendered(n_synth, "train"))
        log.info(f"{self.task}: {len(self.train_set)} training and {len(self.val_set)} validation images")

    def _loader(self, ds, shuffle: bool):
        if isinstance(ds, ArrayDataset):
            # whole batches in one gather: no workers needed, no per-image Python overhead
            sampler = (RandomSampler if shuffle else SequentialSampler)(ds)
            return DataLoader(ds, batch_size=None, sampler=BatchSampler(sampler, self.batch_size, drop_last=False),
                              pin_memory=self.pin_memory)
        return DataLoader(ds, self.batch_size, shuffle=shuffle, num_workers=self.num_workers, collate_fn=collate,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, shuffle=False)


def collate(batch):
    images = torch.from_numpy(np.stack([b[0] for b in batch])).movedim(-1, -3)
    return images, torch.tensor([list(b[1]) for b in batch], dtype=torch.int64)
