"""CaptchaReader: checkpoint or ONNX model in, strings out. predict.py and notebooks both use it.

Importing it is light: PyTorch (and Lightning) load only for a checkpoint, onnxruntime only for
an ONNX model."""
import copy
import json
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..data.alphabet import ctc_best_path, ctc_keep, decode
from ..errors import CaptchaError
from ..files import regular_file
from ..data.images import fit, load_image
from ..parallel import ordered_map
from ..model.spec import ModelSpec


def _to_array(item, width: int, height: int) -> np.ndarray:
    """(i, image), image a path, PIL image or uint8 array of any size ((H, W) grey, (H, W, 3) RGB
    or (H, W, 4) RGBA), as (height, width, 3) uint8 RGB; a failure names images[i]."""
    i, image = item
    if isinstance(image, (str, Path)):
        return load_image(image, width, height)
    if isinstance(image, np.ndarray):
        if image.shape == (height, width, 3) and image.dtype == np.uint8:
            return image  # already what the model reads
        if image.dtype != np.uint8 or not (image.ndim == 2 or image.ndim == 3 and image.shape[2] in (1, 3, 4)):
            raise CaptchaError(f"images[{i}]: an array of shape {image.shape} and dtype {image.dtype}; expected uint8 "
                               f"(H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    try:
        return fit(image, width, height, f"images[{i}]")
    except (ValueError, OSError) as e:  # a closed image, one whose file has gone
        raise CaptchaError(f"images[{i}]: a PIL image that cannot be read ({e})") from None


def decode_logits(logits: np.ndarray, head: str, alphabet: str, lengths=None) -> tuple[list[str], np.ndarray]:
    """(B, steps, classes) logits (or log-probabilities) -> strings and their confidence: the
    product of the softmax maxima of every step (for CTC, the greedy path's probability, blanks
    included: an empty reading is not certain because no character was read). CTC with
    lengths=(shortest, longest): a greedy reading of another length is replaced by the most
    probable path that reads an allowed length, its probability the confidence."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    best = (probs / probs.sum(-1, keepdims=True)).max(-1)
    steps = logits.argmax(-1)
    if head == "positions":
        return [decode(row, alphabet) for row in steps], best.prod(-1)
    rows, confidence = [row[ctc_keep(row)] - 1 for row in steps], best.prod(-1)
    outside = [] if lengths is None else [i for i, row in enumerate(rows) if not lengths[0] <= len(row) <= lengths[1]]
    for i in outside:
        top = logits[i].max(-1, keepdims=True)
        path, score = ctc_best_path(logits[i] - top - np.log(np.exp(logits[i] - top).sum(-1, keepdims=True)), *lengths)
        if score > -np.inf:  # too few steps for that many characters: the greedy reading stays
            rows[i], confidence[i] = path, np.exp(score)
    return [decode(row, alphabet) for row in rows], confidence


def length_range(lengths, spec: ModelSpec | None = None) -> tuple[int, int] | None:
    """lengths= as (shortest, longest): None, a number (4), "4-6" or [4, 6]; one the model (spec) can read."""
    if lengths is None:
        return None
    if isinstance(lengths, str):
        parts = lengths.split("-")
    else:  # a number, or a list (Hydra reads lengths=[4,6] as one)
        parts = list(lengths) if hasattr(lengths, "__iter__") else [lengths]
    whole = all((isinstance(p, int) and not isinstance(p, bool)) or (isinstance(p, str) and p.strip().isdecimal())
                for p in parts)
    if not whole or not 1 <= len(parts) <= 2 or not 1 <= int(parts[0]) <= int(parts[-1]):
        raise CaptchaError(f"lengths={lengths!r}: give the number of characters (lengths=4) or a range (lengths=4-6), "
                           f"at least 1, shortest first")
    shortest, longest = int(parts[0]), int(parts[-1])
    if spec is not None and spec.head == "positions" and (shortest, longest) != spec.lengths:
        n = spec.lengths[0]
        raise CaptchaError(f"lengths={lengths!r}: the {spec.task} model reads exactly {n} character{'s' * (n != 1)}")
    return shortest, longest


# names for the sets of characters captchas draw from, for alphabet= (joined with +: digits+lower)
CHARACTER_SETS = {"digits": "0123456789", "lower": "abcdefghijklmnopqrstuvwxyz", "upper": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}


def characters(allowed) -> str | None:
    """alphabet= as characters: None, a string of them, or named sets (digits+lower)."""
    if allowed is None:
        return None
    if not isinstance(allowed, str):  # Hydra reads alphabet=0123 as the number 123
        raise CaptchaError(f"alphabet={allowed!r}: give the characters in quotes (alphabet='\"0123456789\"') or "
                           f"by name: {', '.join(CHARACTER_SETS)}, joined with + (alphabet=digits+lower)")
    names = allowed.split("+")
    if all(n in CHARACTER_SETS for n in names):
        return "".join(dict.fromkeys("".join(CHARACTER_SETS[n] for n in names)))
    return allowed


def restriction(alphabet: str, head: str, allowed: str | None = None, fold_case: bool = False):
    """A function that narrows (B, steps, classes) logits to the characters `allowed` (None: all of
    the model's) and, with fold_case, adds each upper-case letter's probability to its lower-case
    one's, so that only lower case can be read; None when there is nothing to narrow."""
    if allowed is None and not fold_case:
        return None
    offset = 1 if head == "ctc" else 0  # CTC's class 0 is the blank, never taken away
    if allowed is not None:
        if not isinstance(allowed, str) or not allowed:
            raise CaptchaError(f"alphabet={allowed!r}: give the characters to read, e.g. alphabet=0123456789")
        unknown = sorted(set(allowed.lower() if fold_case else allowed)
                         - set(alphabet.lower() if fold_case else alphabet))
        if unknown:
            raise CaptchaError(f"alphabet={allowed!r}: the model never reads {''.join(unknown)!r} (it reads {alphabet!r})")
    merge = [(alphabet.index(c.lower()) + offset, i + offset) for i, c in enumerate(alphabet)
             if fold_case and c != c.lower() and c.lower() in alphabet]
    wanted = None if allowed is None else set(allowed.lower() if fold_case else allowed)
    drop = [i + offset for i, c in enumerate(alphabet)
            if (wanted is not None and (c.lower() if fold_case else c) not in wanted)
            or (fold_case and c != c.lower() and c.lower() in alphabet)]
    into, source = np.array([m[0] for m in merge], dtype=np.intp), np.array([m[1] for m in merge], dtype=np.intp)

    def narrow(logits: np.ndarray) -> np.ndarray:
        logits = np.array(logits, dtype=np.float32)
        if len(into):
            logits[..., into] = np.logaddexp(logits[..., into], logits[..., source])
        logits[..., drop] = -np.inf
        return logits
    return narrow


def near_ties(logits: np.ndarray, margin: float) -> np.ndarray:
    """Per image: whether at some step its top two classes are within `margin` of each other."""
    if logits.shape[-1] < 2:  # one class: nothing to tie with
        return np.zeros(len(logits), dtype=bool)
    top2 = np.partition(logits, -2, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]).min(-1) < margin


def second_look(first, second, margin: float):
    """A logits function: `first`'s logits (B, 3, H, W uint8 in), with the images that are near ties
    there read again by `second` (an int8 model checked by its fp32 original)."""
    def logits_fn(x: np.ndarray) -> np.ndarray:
        logits = np.array(first(x))
        close = near_ties(logits, margin)
        if close.any():
            logits[close] = second(np.ascontiguousarray(x[close]))
        return logits
    return logits_fn


# Test-time views (tta=N takes the first N): (dx, dy) pixel shifts and a zoom about the centre,
# as small as the training augmentation's. No flips: they change characters.
VIEWS = ((0, 0, 1.0), (2, 0, 1.0), (-2, 0, 1.0), (0, 2, 1.0), (0, -2, 1.0), (0, 0, 1.06), (0, 0, 0.94), (2, 2, 1.03))
# A CTC reader's step-by-step probabilities average well only where the views' steps line up: with
# the views above, one sideways shift (tta=2) cut a fine-tuned claptcha reader from 179 to 123 of
# 200 right, and the zooms (tta=8) a multicolorcaptcha one from 106 to 84. Vertical shifts keep the
# steps in line; they are worth little (tta=3: +19 of 1,200 on one set of draws, +1 of 2,400 on
# another; docs/results.md).
CTC_VIEWS = ((0, 0, 1.0), (0, 1, 1.0), (0, -1, 1.0), (0, 2, 1.0), (0, -2, 1.0))


def shifted(images: np.ndarray, dx: int, dy: int, zoom: float) -> np.ndarray:
    """(B, H, W, 3) images moved by (dx, dy) pixels and zoomed about the centre (nearest pixel),
    edges repeated."""
    _, h, w, _ = images.shape
    rows = np.clip(np.round((np.arange(h) - dy - (h - 1) / 2) / zoom + (h - 1) / 2), 0, h - 1).astype(np.intp)
    cols = np.clip(np.round((np.arange(w) - dx - (w - 1) / 2) / zoom + (w - 1) / 2), 0, w - 1).astype(np.intp)
    return images[:, rows][:, :, cols]


def log_mean_softmax(logits: list[np.ndarray]) -> np.ndarray:
    """The log of the mean class probabilities of several models' or views' logits."""
    total = 0
    for x in logits:
        e = np.exp(x - x.max(-1, keepdims=True))
        total = total + e / e.sum(-1, keepdims=True)
    return np.log(total / len(logits) + 1e-30)


def run_onnx(session, name: str, x: np.ndarray) -> np.ndarray:
    return session.run(None, {name: x})[0]


class CaptchaReader:
    """Reads the captchas of one task with one model, or the average of several (an ensemble),
    over `tta` test-time views. Build it with from_checkpoint(), from_onnx() or ensemble()."""

    def __init__(self, logits_fn, spec: ModelSpec, batch_size: int = 32, num_workers: int = 0, source: str = "",
                 tta: int = 1, allowed: str | None = None, fold_case: bool = False, lengths=None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise CaptchaError(f"batch_size={batch_size!r}: must be a whole number of at least 1")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise CaptchaError(f"num_workers={num_workers!r}: must be a whole number of at least 0")
        self.views = VIEWS if spec.head == "positions" else CTC_VIEWS
        if not isinstance(tta, int) or isinstance(tta, bool) or not 1 <= tta <= len(self.views):
            raise CaptchaError(f"tta={tta!r}: must be a whole number from 1 (no test-time views) to {len(self.views)} "
                               f"for a {spec.head} model")
        self.logits_fns = logits_fn if isinstance(logits_fn, list) else [logits_fn]
        self.spec = spec  # what the model reads (its task, alphabet, size, head)
        self.batch_size, self.num_workers, self.source, self.tta = batch_size, num_workers, source, tta
        self._set_reading(allowed, fold_case, lengths)
        self.precision = "onnxruntime"  # how it computes, for predict.py's report; the constructors refine it

    def _set_reading(self, allowed, fold_case, lengths) -> None:
        # allowed: read only these characters (e.g. digits); fold_case: read upper and lower case as lower
        self.allowed, self.fold_case = allowed, bool(fold_case)
        self.narrow = restriction(self.spec.alphabet, self.spec.head, characters(allowed), fold_case)
        # lengths: read only this many characters (4, or 4-6); None: as many as the model reads
        self.lengths = length_range(lengths, self.spec)

    def reading(self, allowed=None, fold_case: bool = False, lengths=None) -> "CaptchaReader":
        """The same model (shared, not copied: change neither) reading with other options, as a
        server's requests each ask: allowed characters, fold_case and lengths as the constructor takes them."""
        variant = copy.copy(self)
        variant._set_reading(allowed, fold_case, lengths)
        return variant

    @classmethod
    def ensemble(cls, readers: list["CaptchaReader"]) -> "CaptchaReader":
        """One reader that averages the class probabilities of several models of the same task."""
        if not readers:
            raise CaptchaError("ensemble([]): give the readers to average, one or more")
        first = readers[0]
        for r in readers[1:]:
            differ = first.spec.reads_like(r.spec)
            if differ:
                raise CaptchaError(f"{first.source} and {r.source} cannot be averaged: their {', '.join(differ)} differ")
        reader = cls([fn for r in readers for fn in r.logits_fns], first.spec, batch_size=first.batch_size,
                     num_workers=first.num_workers, source=" + ".join(r.source for r in readers), tta=first.tta,
                     allowed=first.allowed, fold_case=first.fold_case, lengths=first.lengths)
        reader.precision = " + ".join(r.precision for r in readers)
        return reader

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", precision: str = "auto", **kwargs):
        """precision auto: on a CPU, the checkpoint's int8 copy where it pays and reads as fp32
        does (int8.py); else bf16 weights where the device computes bf16 natively; else fp32.
        precision=32 forces fp32, int8 the int8 copy."""
        from .int8 import find, gpu_possible

        from ..model.packaged import model_path

        path = model_path(path)  # pretrained:general and the like
        precision, why = str(precision), None  # Hydra passes precision=32 as a number
        if precision not in ("auto", "32", "bf16", "16", "int8"):
            raise CaptchaError(f"precision={precision!r}: choose auto, int8, 32, bf16 or 16")
        if device == "auto" and precision != "int8" and gpu_possible():  # only then is torch imported to decide
            import torch
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if precision in ("auto", "int8") and device in ("auto", "cpu"):  # "auto" left: no GPU can be visible
            found, why = find(path, forced=precision == "int8")
            if found:
                reader = cls.from_onnx(found, **kwargs)
                reader.source, reader.precision = str(path), f"int8 from its copy {why}"
                return reader
        if precision == "int8":
            raise CaptchaError(f"precision=int8 runs on the CPU (onnxruntime): use device=cpu, not device={device}")
        import torch

        from ..model.checkpoint import load_network
        from ..hardware import cpu_precision_reason, inference_dtype, pick_device

        spec, net = load_network(path)
        dev = pick_device(device)
        dtype = inference_dtype(precision, dev)
        # whole-model bf16 (no autocast casts per layer) in NHWC layout, the layout oneDNN and cuDNN run fastest
        net = net.to(dev, dtype=dtype or torch.float32).to(memory_format=torch.channels_last)

        @torch.inference_mode()
        def logits_fn(images: np.ndarray) -> np.ndarray:
            # (B, H, W, 3) memory viewed as (B, 3, H, W): channels-last without a copy (read-only memory,
            # which torch warns about, is copied once)
            x = torch.from_numpy(np.require(images, requirements="W")).to(dev, non_blocking=True).permute(0, 3, 1, 2)
            return net(x).float().cpu().numpy()

        reader = cls(logits_fn, spec, source=str(path), **kwargs)
        reader.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] + f" on {dev.type}"
        if precision == "auto" and dev.type == "cpu" and dtype is None:
            reader.precision += f" ({cpu_precision_reason()})"
        if why:  # a copy exists but was not used: say why
            reader.precision += f"; int8 copy not used: {why}"
        return reader

    @classmethod
    def from_onnx(cls, path, **kwargs):
        import onnxruntime as ort

        from .int8 import second_look_of

        path = Path(path)
        contract_path = path.with_suffix(path.suffix + ".json")
        if not path.is_file() or not contract_path.is_file():
            raise CaptchaError(f"{path}: an exported model needs the file and its contract {contract_path.name} beside it")
        try:
            contract = json.loads(regular_file(contract_path, "export contract").read_text())
            look = second_look_of(contract, path.parent)  # an int8 copy's fp32 original, for its near ties
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError, OSError) as e:
            raise CaptchaError(f"{contract_path}: not a captcha-lit export contract ({type(e).__name__}: {e})") from None
        spec = ModelSpec.read(contract, str(contract_path))
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for broken files
            raise CaptchaError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
        graph_input, graph_output = session.get_inputs()[0], session.get_outputs()[0]
        if list(graph_input.shape[2:]) != [spec.height, spec.width]:
            raise CaptchaError(f"{path}: the graph takes {graph_input.shape[2:]} (height, width) images, but its "
                               f"contract {contract_path.name} says {spec.width}x{spec.height}: they belong to "
                               f"different models")
        steps, classes = (graph_output.shape[1:] + [None, None])[:2]
        if classes != spec.classes or (spec.head == "positions" and steps != spec.steps):
            raise CaptchaError(f"{path}: the graph gives {steps} steps of {classes} classes, but its contract "
                               f"{contract_path.name} says {spec.steps} characters of {len(spec.alphabet)} "
                               f"({spec.head} head): they belong to different models")
        name = graph_input.name
        run = partial(run_onnx, session, name)
        if look is not None:
            original, margin = look
            if not original.is_file():
                raise CaptchaError(f"{path}: its contract reads near ties again with {original}, which is missing; "
                                   f"make the copy again: captcha-export CHECKPOINT --int8 IMAGES")
            # its threads sleep between its rare runs instead of spinning against the int8 model's (1.1x)
            quiet = ort.SessionOptions()
            quiet.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                again = ort.InferenceSession(str(original), quiet, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime's own exception types for broken files
                raise CaptchaError(f"{original}: not a loadable ONNX model ({str(e).splitlines()[0][:200]}); make "
                                   f"the copy again: captcha-export CHECKPOINT --int8 IMAGES") from None
            run = second_look(run, partial(run_onnx, again, name), margin)

        def logits_fn(images: np.ndarray) -> np.ndarray:
            return run(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

        reader = cls(logits_fn, spec, source=str(path), **kwargs)
        reader.precision = f"{contract.get('precision', 'fp32')} on onnxruntime"
        return reader

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 images -> (B, steps, classes) logits; with several models or views, the
        log of their mean probabilities."""
        views = [images] + [shifted(images, *v) for v in self.views[1:self.tta]]  # each view made once, for every model
        outputs = [fn(view) for view in views for fn in self.logits_fns]
        if any(o.shape != outputs[0].shape for o in outputs):
            raise CaptchaError(f"{self.source}: the models give outputs of different shapes and cannot be averaged")
        return outputs[0] if len(outputs) == 1 else log_mean_softmax(outputs)

    def _batches(self, images, progress: bool):
        """Lists of (H, W, 3) arrays, `batch_size` at a time, decoded on num_workers processes."""
        load = partial(_to_array, width=self.spec.width, height=self.spec.height)
        with tqdm(total=len(images), desc=f"reading {self.spec.task}", unit="img", disable=not progress) as bar:
            batch = []
            for array in ordered_map(load, list(enumerate(images)), self.num_workers):
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
        list; a single path, PIL image or array of one image is read as a list of one."""
        # one array of 2 or 3 dimensions is one image (grey, RGB or RGBA); of 4, a stack of them
        single = isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
        if not single and not hasattr(images, "__iter__"):
            raise CaptchaError(f"read({type(images).__name__}): give an image (a path, PIL image or uint8 array) or a "
                               f"list of them")
        images = [images] if single else list(images)
        bad = next((i for i, x in enumerate(images) if not isinstance(x, (str, Path, Image.Image, np.ndarray))), None)
        if bad is not None:
            raise CaptchaError(f"read(): images[{bad}] is a {type(images[bad]).__name__}; each must be a path, PIL image "
                               f"or uint8 array")
        labels, confidence = [], []
        for batch in self._batches(images, progress):
            got, conf = self.decode(self.logits(np.stack(batch)))
            labels += got
            confidence.append(conf)
        return labels, np.concatenate(confidence) if confidence else np.zeros(0)

    def decode(self, logits: np.ndarray) -> tuple[list[str], np.ndarray]:
        """logits() of a batch -> its texts and their confidence, read with this reader's options."""
        got, conf = decode_logits(logits if self.narrow is None else self.narrow(logits), self.spec.head,
                                  self.spec.alphabet, self.lengths)
        return [g.lower() for g in got] if self.fold_case else got, conf

    def read(self, images, progress: bool = False) -> list[str]:
        """The text of each image (file paths, PIL images or uint8 arrays: (H, W) grey, (H, W, 3) RGB, (H, W, 4) RGBA)."""
        return self.predict(images, progress)[0]
