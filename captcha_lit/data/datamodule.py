"""The LightningDataModule: train/validation/test data for one task, rendered, read from a
labelled folder, or both mixed."""
import logging
import os
from collections import Counter

import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, WeightedRandomSampler

from .datasets import ArrayDataset, FolderDataset, RenderedDataset, cached, collate, concat, materialize, split
from ..errors import CaptchaError
from .folders import read_labelled
from .images import image_size
from .render import Renderer
from .tasks import from_config

log = logging.getLogger(__name__)


class CaptchaDataModule(pl.LightningDataModule):
    """Without `root`: `num_train` rendered training images and `num_val` rendered validation and
    test images. With `root` (a labelled folder in any layout of folders.py): a seeded split of
    the folder into training, validation and (with test_fraction > 0) test images, with
    `synthetic_ratio` rendered images per real training image added to the training set;
    `real_fraction` (None: in proportion to their numbers) is the share of real images an epoch
    draws. Validation and test stay real. `epoch_size` fixes how many training images an epoch draws
    (reshuffled, repeating the set as often as it takes), so a recipe costs the same for 300
    images as for 3,000; None: each training image once. `epoch_pixels` sets it instead as a
    pixel budget (epoch_size = epoch_pixels / (width * height)), so the cost is the same whatever
    the image size too."""

    def __init__(self, task, root: str | None = None, num_train: int = 20000, num_val: int = 1000,
                 synthetic_ratio: float = 0.0, real_fraction: float | None = None, epoch_size: int | None = None,
                 epoch_pixels: int | None = None,
                 val_fraction: float = 0.15,
                 test_fraction: float = 0.0, fold: int | None = None, batch_size: int = 128, seed: int = 0, materialize: bool = True,
                 cache_dir: str | None = None, num_workers: int | None = None, pin_memory: bool | None = None,
                 font_sizes=None, fonts: str | None = None, style: str = "imagecaptcha", fresh_train: bool = False,
                 imagecaptcha_share: float = 0.25, kaggle_share: float = 0.0):
        super().__init__()
        self.task = from_config(task)
        self.root, self.num_train, self.num_val = root, num_train, num_val
        if epoch_pixels is not None:
            if epoch_size is not None:
                raise CaptchaError("data.epoch_size and data.epoch_pixels both set: give one (the other null)")
            epoch_size = max(1, round(epoch_pixels / (self.task.width * self.task.height)))
        self.synthetic_ratio, self.real_fraction, self.epoch_size = synthetic_ratio, real_fraction, epoch_size
        self.val_fraction, self.test_fraction, self.batch_size, self.seed = val_fraction, test_fraction, batch_size, seed
        self.fold = fold
        self.materialize, self.cache_dir = materialize, cache_dir
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.num_workers = os.cpu_count() if num_workers is None else num_workers
        t = self.task
        self.renderer = Renderer(t.width, t.height, t.length, t.alphabet, font_sizes, style, fonts, imagecaptcha_share,
                                 kaggle_share)
        self.train_set = self.val_set = self.test_set = None
        # rendered training images drawn anew every epoch (needs trainer.reload_dataloaders_every_n_epochs=1):
        # a long pretraining never sees an image twice, and rendering never shares the cores with training
        self.fresh_train, self.train_epoch = fresh_train, 0
        self.train_weights = None  # per-image sampling weights when real_fraction is set
        self.real_train_size = 0  # the training set's real images, which come first (0: all rendered)

    def _rendered(self, size: int, stream: str):
        ds = RenderedDataset(self.renderer, size, self.seed, stream)
        if not self.materialize:
            return ds
        if self.cache_dir:
            return cached(ds, self.cache_dir, self.num_workers or 1)
        return materialize(ds, self.num_workers or 1, f"rendering {stream}")

    def _folder(self, items):
        t = self.task
        ds = FolderDataset(items, t.width, t.height, t.alphabet, t.lengths[1])
        return materialize(ds, self.num_workers or 1, "loading images") if self.materialize else ds

    def setup(self, stage: str | None = None):
        if self.val_set is not None or self.train_set is not None:  # set up once: fit, validate and test share the splits
            return
        if self.root is None:
            # fresh_train: train_dataloader renders the set of the epoch training starts at (a resumed
            # run renders none it would discard)
            self.train_set = None if self.fresh_train else self._rendered(self.num_train, "train")
            self.val_set = self._rendered(self.num_val, "val")
            self.test_set = self._rendered(self.num_val, "test")
            return
        items = read_labelled(self.root, self.task)
        sizes = Counter(image_size(path) for path, _ in items)
        other = sum(n for size, n in sizes.items() if size != (self.task.width, self.task.height))
        if other:
            log.warning(f"{self.root}: {other} of {len(items)} images are not {self.task.width}x{self.task.height}; "
                        f"they are resized")
        train_idx, val_idx, test_idx = split(len(items), self.val_fraction, self.seed, self.test_fraction, self.fold)
        if len(train_idx) == 0:
            raise CaptchaError(f"{self.root}: {len(items)} usable {self.task.name} image(s) leave none to train on after "
                               f"the validation ({len(val_idx)}) and test ({len(test_idx)}) splits: add images, or lower "
                               f"data.val_fraction={self.val_fraction} or data.test_fraction={self.test_fraction}")
        self.train_set = self._folder([items[i] for i in train_idx])
        self.real_train_size = len(train_idx)
        n_rendered = round(self.synthetic_ratio * len(train_idx))
        if self.real_fraction is not None and not n_rendered:
            log.warning(f"data.real_fraction={self.real_fraction} has no effect: no rendered images join the real "
                        f"ones (data.synthetic_ratio={self.synthetic_ratio})")
        if n_rendered:
            self.train_set = concat([self.train_set, self._rendered(n_rendered, "train")])
            if self.real_fraction is not None:
                n_real = len(train_idx)
                self.train_weights = torch.cat([torch.full((n_real,), self.real_fraction / n_real),
                                                torch.full((n_rendered,), (1 - self.real_fraction) / n_rendered)])
        # val_fraction=0 (final training): no validation, and the last checkpoint is the model
        self.val_set = self._folder([items[i] for i in val_idx]) if len(val_idx) else None
        # without a test split, test reports on the validation split (which also picked the checkpoint)
        self.test_set = self._folder([items[i] for i in test_idx]) if len(test_idx) else self.val_set
        log.info(f"{self.task.name}: {len(train_idx)} real + {n_rendered} rendered training images "
                 f"({self.epoch_size or len(self.train_set)} an epoch), {len(val_idx)} validation, "
                 f"{len(test_idx) or 'no separate'} test")

    def _loader(self, ds, shuffle: bool, weights=None):
        if weights is not None:
            sampler = WeightedRandomSampler(weights, self.epoch_size or len(ds))
        else:
            sampler = RandomSampler(ds, num_samples=self.epoch_size) if shuffle else SequentialSampler(ds)
        if isinstance(ds, ArrayDataset):
            # whole batches in one gather: no workers needed, no per-image Python overhead
            return DataLoader(ds, batch_size=None, sampler=BatchSampler(sampler, self.batch_size, drop_last=False),
                              pin_memory=self.pin_memory)
        return DataLoader(ds, self.batch_size, sampler=sampler, num_workers=self.num_workers, collate_fn=collate,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        if self.fresh_train and self.root is None and (self.train_set is None or epoch != self.train_epoch):
            self.train_set = self._rendered(self.num_train, f"train{epoch}" if epoch else "train")
            self.train_epoch = epoch
        return self._loader(self.train_set, shuffle=True, weights=self.train_weights)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []

    def test_dataloader(self):
        return self._loader(self.test_set, shuffle=False) if self.test_set is not None else []
