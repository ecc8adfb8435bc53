"""A callback that shows what the model reads: validation images captioned 'predicted / true'."""
import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from ..data.alphabet import decode
from .module import greedy_decode


def captions(module, images, targets) -> list[tuple[str, str]]:
    """(read, true) per image, read as the model reads (CTC: repeats merged, blanks dropped)."""
    with torch.no_grad():
        preds = greedy_decode(module(images), module.spec.head)
    alphabet = module.spec.alphabet
    return [(decode(p, alphabet), decode(t, alphabet)) for p, t in zip(preds.cpu(), targets.cpu())]


class ValidationImages(pl.Callback):
    """Each validation, logs a grid of the first `count` validation images to TensorBoard (a no-op
    without a TensorBoard logger). Captions are green when right, red when wrong."""

    def __init__(self, count: int = 32):
        self.count = count

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None or batch_idx != 0 or trainer.sanity_checking:
            return
        images, targets = batch[0][: self.count], batch[1][: self.count]
        tiles = []
        for image, (p, t) in zip(images.cpu(), captions(pl_module, images, targets)):
            tile = Image.new("RGB", (image.shape[2], image.shape[1] + 12), "white")
            tile.paste(Image.fromarray(image.permute(1, 2, 0).numpy()))
            ImageDraw.Draw(tile).text((2, image.shape[1]), f"{p} / {t}", fill="green" if p == t else "red")
            tiles.append(torch.from_numpy(np.array(tile)).permute(2, 0, 1))
        logger.experiment.add_image("val/predictions", make_grid(tiles, nrow=8, pad_value=255), trainer.global_step)
