"""Datasets: rendered captchas, labelled image files, and arrays that hold either in memory or on
disk, filled once on all cores.

Images travel as uint8 (B, 3, H, W) tensors; the LightningModule scales and normalises them
on the device, so the data path moves a quarter of the bytes of float32. Targets are class
indices padded with -1 to the task's longest label.
"""
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .alphabet import encode
from ..errors import CaptchaError
from ..files import atomic_path
from .images import load_image
from ..parallel import ordered_map
from .render import Renderer
from .seeded import sample_rng


# ---------------------------------------------------------------- datasets
class RenderedDataset(Dataset):
    """`size` ImageCaptcha images; image i is the same for the same (seed, stream, i)."""

    def __init__(self, renderer: Renderer, size: int, seed: int, stream: str):
        self.renderer, self.size, self.seed, self.stream = renderer, size, seed, stream

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        img, label = self.renderer.render(sample_rng(self.seed, self.stream, i))
        return img, encode(label, self.renderer.alphabet, self.renderer.lengths[1])


class FolderDataset(Dataset):
    """Labelled image files, decoded and resized to width x height on access."""

    def __init__(self, items: list[tuple[str, str]], width: int, height: int, alphabet: str, max_length: int):
        self.items, self.width, self.height, self.alphabet, self.max_length = items, width, height, alphabet, max_length

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return load_image(path, self.width, self.height), encode(label, self.alphabet, self.max_length)


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
    return dataset[i]


def materialize(dataset: Dataset, processes: int, desc: str) -> ArrayDataset:
    """Reads every item of `dataset` once, on `processes` cores, into arrays. A bad item (an
    unreadable image) stops it with that item's error."""
    first_img, first_target = dataset[0]
    images = np.empty((len(dataset), *first_img.shape), np.uint8)
    targets = np.empty((len(dataset), len(first_target)), np.int64)
    jobs = [(dataset, i) for i in range(len(dataset))]
    bar = dict(total=len(dataset), desc=desc, unit="img", disable=len(dataset) < 2000, leave=False)
    for i, (image, target) in enumerate(tqdm(ordered_map(_fetch, jobs, processes, chunksize=64), **bar)):
        images[i], targets[i] = image, target
    return ArrayDataset(images, targets)


def cached(dataset: RenderedDataset, cache_dir, processes: int) -> ArrayDataset:
    """Renders `dataset` once into `cache_dir` as .npy files and memory-maps them on later runs."""
    r = dataset.renderer
    style = f"{r.style}{float(r.imagecaptcha_share)},{float(r.kaggle_share)}" if r.style == "general" else r.style
    key = (f"{r.width}x{r.height}-{r.lengths}-{r.alphabet}-{r.font_sizes}-{r.fonts}-{style}-{dataset.seed}-"
           f"{dataset.stream}-{dataset.size}")
    name = hashlib.sha1(key.encode()).hexdigest()[:16]
    img_path, tgt_path = Path(cache_dir) / f"{name}-images.npy", Path(cache_dir) / f"{name}-targets.npy"
    if not (img_path.exists() and tgt_path.exists()):
        arrays = materialize(dataset, processes, f"rendering {dataset.stream}")
        for path, array in ((tgt_path, arrays.targets), (img_path, arrays.images)):
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, array)
    try:
        images, targets = np.load(img_path, mmap_mode="r"), np.load(tgt_path)
    except (ValueError, OSError, EOFError) as e:  # truncated or not an array file
        raise CaptchaError(f"{img_path}: a broken cache file ({e}); delete {img_path} and {tgt_path} to render "
                           f"them again") from None
    if images.shape[:1] != targets.shape[:1] or images.shape[1:] != (r.height, r.width, 3):
        raise CaptchaError(f"{img_path}: a cache file of the wrong shape {images.shape}; delete it and {tgt_path} "
                           f"to render them again")
    return ArrayDataset(images, targets)


def concat(datasets: list[Dataset]) -> Dataset:
    if all(isinstance(d, ArrayDataset) for d in datasets):
        return ArrayDataset(np.concatenate([d.images for d in datasets]), np.concatenate([d.targets for d in datasets]))
    return torch.utils.data.ConcatDataset(datasets)


def split(n: int, val_fraction: float, seed: int, test_fraction: float = 0.0, fold: int | None = None):
    """Train, validation and test indices of range(n), fixed by the seed. The test split is drawn
    first, so it stays the same whatever val_fraction is (a final training with val_fraction=0
    is tested on the same images as the run that chose its schedule). A fraction above 0 takes at
    least one image; 0 takes none. With a fold k: k-fold cross-validation, K = 1 / test_fraction
    folds of the same shuffle, fold k testing on the k-th of K near-equal slices (disjoint, all
    of range(n) over the K folds)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if fold is not None:
        folds = round(1 / test_fraction) if test_fraction > 0 else 0
        if not 0 <= fold < folds:
            raise CaptchaError(f"data.fold={fold}: data.test_fraction={test_fraction} makes {folds} folds"
                               + (f" (0 to {folds - 1})" if folds else ": set data.test_fraction=0.2 for 5"))
        if folds > n:  # some folds would test on nothing
            raise CaptchaError(f"data.test_fraction={test_fraction} makes {folds} folds of {n} images: fewer folds "
                               f"than images, please")
        start, end = round(fold * n / folds), round((fold + 1) * n / folds)
        order, n_test = np.concatenate([order[start:end], order[:start], order[end:]]), end - start
    return np.sort(order[n_test + n_val:]), np.sort(order[n_test:n_test + n_val]), np.sort(order[:n_test])


def collate(batch):
    images = torch.from_numpy(np.stack([b[0] for b in batch])).movedim(-1, -3)
    return images, torch.tensor([list(b[1]) for b in batch], dtype=torch.int64)
