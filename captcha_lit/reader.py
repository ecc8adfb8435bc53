"""CaptchaReader: checkpoint or ONNX model in, strings out. predict.py and notebooks both use it.

Importing it is light: PyTorch (and Lightning) load only for a checkpoint, onnxruntime only for
an ONNX model."""
import json
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .alphabet import ctc_keep, decode
from .errors import CaptchaError
from .images import load_image, to_rgb
from .parallel import ordered_map


def _to_array(image, width: int, height: int) -> np.ndarray:
    """A path, PIL image or (H, W, 3) uint8 array as (H, W, 3) uint8 of the model's size."""
    if isinstance(image, (str, Path)):
        return load_image(image, width, height)
    if isinstance(image, Image.Image):
        image = to_rgb(image)
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
    array = np.asarray(image)
    if array.shape != (height, width, 3) or array.dtype != np.uint8:
        raise CaptchaError(f"image array of shape {array.shape} and dtype {array.dtype}: expected ({height}, {width}, 3) uint8")
    return array


def decode_logits(logits: np.ndarray, head: str, alphabet: str) -> tuple[list[str], np.ndarray]:
    """(B, steps, classes) logits -> strings and their confidence: the product of the softmax
    maxima of the steps that gave a character."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    best = (probs / probs.sum(-1, keepdims=True)).max(-1)
    steps = logits.argmax(-1)
    if head == "positions":
        return [decode(row, alphabet) for row in steps], best.prod(-1)
    labels, confidence = [], []
    for row, p in zip(steps, best):
        keep = ctc_keep(row)
        labels.append(decode(row[keep] - 1, alphabet))
        confidence.append(p[keep].prod())
    return labels, np.asarray(confidence)


class CaptchaReader:
    """Reads the captchas of one task. Build it with from_checkpoint() or from_onnx()."""

    def __init__(self, logits_fn, task: str, length, alphabet: str, width: int, height: int, head: str = "positions",
                 lowercase: bool = False, batch_size: int = 256, num_workers: int = 0, source: str = ""):
        if batch_size < 1:
            raise CaptchaError(f"batch_size={batch_size}: must be at least 1")
        self.logits_fn, self.task, self.length, self.alphabet, self.head = logits_fn, task, length, alphabet, head
        self.lowercase = lowercase  # the model was trained on lower-cased labels
        self.width, self.height, self.batch_size, self.num_workers, self.source = width, height, batch_size, num_workers, source

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", precision: str = "auto", **kwargs):
        import torch

        from .checkpoint import load_module
        from .hardware import inference_dtype, pick_device

        module = load_module(path)
        dev = pick_device(device)
        module.to(dev)
        dtype = inference_dtype(precision, dev)

        @torch.inference_mode()
        def logits_fn(images: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(images).movedim(-1, 1).to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                return module(x).float().cpu().numpy()

        hp = module.hparams
        return cls(logits_fn, hp.task, hp.length, hp.alphabet, hp.width, hp.height, hp.head,
                   hp.lowercase, source=str(path), **kwargs)

    @classmethod
    def from_onnx(cls, path, **kwargs):
        import onnxruntime as ort

        path = Path(path)
        contract_path = path.with_suffix(path.suffix + ".json")
        if not path.is_file() or not contract_path.is_file():
            raise CaptchaError(f"{path}: an exported model needs the file and its contract {contract_path.name} beside it")
        contract = json.loads(contract_path.read_text())
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def logits_fn(images: np.ndarray) -> np.ndarray:
            return session.run(None, {name: np.ascontiguousarray(images.transpose(0, 3, 1, 2))})[0]

        return cls(logits_fn, contract["task"], contract["length"], contract["alphabet"], contract["width"],
                   contract["height"], contract.get("head", "positions"), contract.get("lowercase", False),
                   source=str(path), **kwargs)

    def _batches(self, images, progress: bool):
        """Lists of (H, W, 3) arrays, `batch_size` at a time, decoded on num_workers processes."""
        load = partial(_to_array, width=self.width, height=self.height)
        with tqdm(total=len(images), desc=f"reading {self.task}", unit="img", disable=not progress) as bar:
            batch = []
            for array in ordered_map(load, images, self.num_workers):
                batch.append(array)
                if len(batch) == self.batch_size:
                    yield batch
                    bar.update(len(batch))
                    batch = []
            if batch:
                yield batch
                bar.update(len(batch))

    def predict(self, images, progress: bool = False) -> tuple[list[str], np.ndarray]:
        """Labels and their confidence (product of the per-character softmax maxima). `images` is a
        list; a single path, PIL image or (H, W, 3) array is read as a list of one."""
        single = isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3)
        images = [images] if single else list(images)
        labels, confidence = [], []
        for batch in self._batches(images, progress):
            got, conf = decode_logits(self.logits_fn(np.stack(batch)), self.head, self.alphabet)
            labels += got
            confidence.append(conf)
        return labels, np.concatenate(confidence) if confidence else np.zeros(0)

    def read(self, images, progress: bool = False) -> list[str]:
        """The text of each image (PIL images, file paths or (H, W, 3) uint8 arrays)."""
        return self.predict(images, progress)[0]
