"""CaptchaReader: checkpoint or ONNX model in, strings out. predict.py and notebooks both use it."""
import json
import multiprocessing as mp
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .alphabet import decode
from .checkpoint import load_module
from .data import TASK_LENGTHS, load_image
from .errors import CaptchaError
from .hardware import inference_dtype, pick_device


def _to_array(image, width: int, height: int) -> np.ndarray:
    """A path, PIL image or (H, W, 3) uint8 array as (H, W, 3) uint8 of the model's size."""
    if isinstance(image, (str, Path)):
        return load_image(image, width, height)
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
    array = np.asarray(image)
    if array.shape != (height, width, 3) or array.dtype != np.uint8:
        raise CaptchaError(f"image array of shape {array.shape} and dtype {array.dtype}: expected ({height}, {width}, 3) uint8")
    return array


class CaptchaReader:
    """Reads the captchas of one task. Build it with from_checkpoint() or from_onnx()."""

    def __init__(self, logits_fn, task: str, length: int, alphabet: str, width: int, height: int,
                 batch_size: int = 256, num_workers: int = 0, source: str = ""):
        if TASK_LENGTHS.get(task) != length:
            raise CaptchaError(f"{source}: the model says it is for {task} but reads {length} characters; "
                               f"{task} needs {TASK_LENGTHS.get(task)}")
        if batch_size < 1:
            raise CaptchaError(f"batch_size={batch_size}: must be at least 1")
        self.logits_fn, self.task, self.length, self.alphabet = logits_fn, task, length, alphabet
        self.width, self.height, self.batch_size, self.num_workers, self.source = width, height, batch_size, num_workers, source

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", precision: str = "auto", **kwargs):
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
        return cls(logits_fn, hp.task, hp.length, hp.alphabet, hp.width, hp.height, source=str(path), **kwargs)

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
                   contract["height"], source=str(path), **kwargs)

    def _batches(self, images, progress: bool):
        """Lists of (H, W, 3) arrays, `batch_size` at a time, decoded on num_workers processes."""
        load = partial(_to_array, width=self.width, height=self.height)
        bar = tqdm(total=len(images), desc=f"reading {self.task}", unit="img", disable=not progress)
        pool = mp.get_context("fork").Pool(self.num_workers) if self.num_workers > 1 else None
        try:
            arrays = pool.imap(load, images, chunksize=32) if pool else map(load, images)
            batch = []
            for array in arrays:
                batch.append(array)
                if len(batch) == self.batch_size:
                    yield batch
                    bar.update(len(batch))
                    batch = []
            if batch:
                yield batch
                bar.update(len(batch))
        finally:
            bar.close()
            if pool:
                pool.terminate()

    def predict(self, images, progress: bool = False) -> tuple[list[str], np.ndarray]:
        """Labels and their confidence (product of the per-character softmax maxima)."""
        images = list(images)
        labels, confidence = [], []
        for batch in self._batches(images, progress):
            logits = self.logits_fn(np.stack(batch))
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            labels += [decode(row, self.alphabet) for row in logits.argmax(-1)]
            confidence.append(probs.max(-1).prod(-1))
        return labels, np.concatenate(confidence) if confidence else np.zeros(0)

    def read(self, images, progress: bool = False) -> list[str]:
        """The text of each image (PIL images, file paths or (H, W, 3) uint8 arrays)."""
        return self.predict(images, progress)[0]
