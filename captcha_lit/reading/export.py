"""Export a checkpoint to ONNX: for captcha-lit's own reader (with a JSON contract beside it), or
for the ddddocr package.

    captcha-export CHECKPOINT [OUTPUT.onnx]
    captcha-export CHECKPOINT OUT --format ddddocr        -> OUT.onnx, OUT.charsets.json
    captcha-export CHECKPOINT --int8 IMAGES     -> CHECKPOINT's int8 copy, calibrated on IMAGES
    captcha-export CHECKPOINT OUT.ckpt --format weights   -> its weights alone, fp16, for init_from=

captcha-lit's graph takes uint8 (B, 3, height, width) images and returns the model's logits;
scaling and normalisation are inside it. The contract (task, length, alphabet, size, head,
normalisation) lets onnxruntime users preprocess and decode without PyTorch.

ddddocr (1.6.x) feeds one float (1, 3, H, W) image of pixels / 255 and decodes greedily as CTC
with the blank at class 0. A CTC model is exported as it is; a per-position model emits a blank
step between its positions (2N - 1 steps), so that "f99f" is not merged into "f9f".
"""
import json
import logging
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..model.checkpoint import load_network, read_checkpoint
from ..model.spec import ModelSpec
from ..errors import CaptchaError
from ..files import atomic_path, atomic_write_text
from ..data.datasets import ArrayDataset
from ..data.images import IMAGE_SUFFIXES, load_image
from .int8 import AGREEMENT, again, copy_path, digest, original_path
from .reader import decode_logits, near_ties, run_onnx

log = logging.getLogger(__name__)
LARGE = 1e4  # a logit no softmax step can compete with


def _to_onnx(model: nn.Module, example: torch.Tensor, output: Path, dynamic_axes: dict) -> None:
    with atomic_path(output) as tmp:
        # the TorchScript exporter: it needs no extra package and handles this plain CNN
        torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)


BATCH = {"images": {0: "batch"}, "logits": {0: "batch"}}  # any number of images per run


def _example(spec: ModelSpec) -> torch.Tensor:
    """A batch of two blank uint8 images of the model's size, to trace the graph with."""
    return torch.zeros(2, 3, spec.height, spec.width, dtype=torch.uint8)


def _refuse_overwriting_input(ckpt, output: Path, images=None) -> None:
    """Refuse, before any work, an output that is the checkpoint (also through a link), an existing
    file in the folder of images being read, or not a regular file."""
    real = os.path.realpath(output)
    if output.exists() and real == os.path.realpath(ckpt):
        raise CaptchaError(f"{output}: that is the checkpoint being exported; choose another output name")
    if images is not None and output.exists() and Path(real).is_relative_to(os.path.realpath(images)):
        raise CaptchaError(f"{output}: that is a file of {images}, which is being read; choose another output name")
    if output.exists() and not output.is_dir() and not output.is_file():
        raise CaptchaError(f"{output}: not a regular file; choose another output name")
    if output.is_dir():
        raise CaptchaError(f"{output}: is a folder; give the output file's name")
    if not output.parent.is_dir():
        raise CaptchaError(f"{output}: its folder {output.parent} does not exist")


def folder_images(folder, task: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, check) images of `folder` (its `task` subfolder when it has one), as uint8
    (N, height, width, 3): up to 256 spread over it to calibrate on, and up to 1,024 of the others
    to check the int8 model on (the calibration images again when there are no others)."""
    folder = Path(folder)
    folder = folder / task if (folder / task).is_dir() else folder
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CaptchaError(f"--int8 {folder}: no images to calibrate on; give a folder of the task's images")
    calibrate = paths[:: max(1, len(paths) // 256)][:256]
    rest = sorted(set(paths) - set(calibrate))
    check = rest[:: max(1, len(rest) // 1024)][:1024] or calibrate

    def load(some):
        return np.stack([load_image(p, width, height) for p in some])
    return load(calibrate), load(check)


def quantize_int8(fp32: Path, output: Path, images: np.ndarray) -> None:
    """A static int8 (QDQ) copy of an exported model: per-channel int8 weights, uint8 activations
    whose ranges are measured on `images` ((N, H, W, 3) uint8). onnxruntime runs it with the CPU's
    int8 dot products (VNNI), about twice its bf16 speed here (bench/predict_throughput.py)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": nchw[i:i + 32]} for i in range(0, len(nchw), 32)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp, atomic_path(output) as out:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shapes inferred and the graph simplified, as advised
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _session(path: Path):
    import onnxruntime as ort

    return partial(run_onnx, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), "images")


def logits_of(run, images: np.ndarray) -> np.ndarray:
    """A logits function's logits for (N, H, W, 3) uint8 images, 64 at a time."""
    return np.concatenate([run(np.ascontiguousarray(images[i:i + 64].transpose(0, 3, 1, 2)))
                           for i in range(0, len(images), 64)])


def look_margin(int8, fp32, images: np.ndarray) -> float:
    """Twice the int8 model's usual logit error (99th percentile over `images` of each image's
    largest error): an image whose top two classes are further apart than that reads as in fp32."""
    error = np.abs(logits_of(int8, images) - logits_of(fp32, images)).max(axis=(1, 2))
    return float(2 * np.quantile(error, 0.99))


def _write_contract(spec: ModelSpec, output: Path, **extra) -> None:
    """OUTPUT.json: what the model reads (read back by ModelSpec.read) and how to call it."""
    contract = spec.values()
    contract.update(input="uint8 (batch, 3, height, width) RGB",
                    output="logits (batch, steps, classes): positions: argmax per step indexes the alphabet; "
                           "ctc: class 0 is the blank, class i is alphabet[i - 1], merge repeats", **extra)
    atomic_write_text(output.with_suffix(output.suffix + ".json"), json.dumps(contract, indent=2) + "\n")


def export_onnx(ckpt, output=None) -> Path:
    """OUTPUT.onnx (default: beside the checkpoint) and its contract OUTPUT.onnx.json."""
    spec, net = load_network(ckpt)
    output = Path(output) if output else Path(ckpt).with_suffix(".onnx")
    _refuse_overwriting_input(ckpt, output)
    if output.with_suffix(".charsets.json").exists():  # the charsets would then describe this model
        raise CaptchaError(f"{output}: a ddddocr export is there ({output.with_suffix('.charsets.json').name} beside "
                           f"it); name another output")
    _to_onnx(net, _example(spec), output, BATCH)
    _write_contract(spec, output, precision="fp32")
    return output


def export_int8(ckpt, calibration: np.ndarray, check: np.ndarray, output=None, images=None) -> tuple[Path, int, int]:
    """An int8 model calibrated on `calibration` images ((N, H, W, 3) uint8, as `check`); how many
    of the `check` images it reads as fp32 does, and how many of them it read again in fp32.
    Default output: the checkpoint's int8 copy X.int8.onnx, which readers use in its place where it pays (int8.py),
    with its fp32 original X.int8.fp32.onnx beside it: images the int8 model finds near a tie
    (within look_margin) are read again by the original. Its contract records the checkpoint's
    sha256, the margin and the agreement. An explicit output is a plain int8 model."""
    made_from = digest(ckpt) if Path(ckpt).is_file() else None  # before reading: the contract names what was quantised
    spec, net = load_network(ckpt)
    is_copy = output is None
    output = Path(output) if output else copy_path(ckpt)
    for path in (output, Path(f"{output}.json"), original_path(output)):  # images: the folder calibrated on
        _refuse_overwriting_input(ckpt, path, images)
    output.with_suffix(output.suffix + ".json").unlink(missing_ok=True)  # an old contract never describes the new model
    extra, re_read = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _to_onnx(net, _example(spec), fp32, BATCH)
        quantize_int8(fp32, output, calibration)
        int8, original = _session(output), _session(fp32)
        reference, got = logits_of(original, check), logits_of(int8, check)
        if is_copy:
            margin = look_margin(int8, original, calibration)
            with atomic_path(original_path(output)) as tmp_original:
                shutil.copyfile(fp32, tmp_original)
            extra["second_look"] = {"model": original_path(output).name, "margin": round(margin, 4)}
            close = near_ties(got, round(margin, 4))  # what a reader of the copy reads again (reader.second_look)
            got, re_read = np.where(close[:, None, None], reference, got), int(close.sum())
    same = sum(a == b for a, b in zip(decode_logits(reference, spec.head, spec.alphabet)[0],
                                      decode_logits(got, spec.head, spec.alphabet)[0]))
    if digest(ckpt) != made_from:
        raise CaptchaError(f"{ckpt} changed while its int8 copy was made (a run still saving it?); export it again")
    _write_contract(spec, output, precision="int8", checkpoint_sha256=made_from,
                    agreement={"images": len(check), "same_string": same, "read_again": re_read}, **extra)
    return output, same, re_read


class DdddocrGraph(nn.Module):
    """Float pixels in [0, 1] -> CTC scores (1, steps, 1 + len(alphabet)), blank first."""

    def __init__(self, net, head: str):
        super().__init__()
        self.net, self.head = net, head

    def forward(self, pixels):
        # ddddocr hands imported models the image's own channels: RGB, RGBA (transparent PNGs, as
        # its own model reads them) or one grey channel. Branch-free, so one graph takes all three:
        # the alpha channel is the 4th where there is one (else 1), grey is spread over RGB, and the
        # colours are laid on white as captcha-lit's reader does
        alpha = torch.cat([pixels[:, 3:4], torch.ones_like(pixels[:, :1])], 1)[:, :1]
        rgb = pixels[:, :3].expand(-1, 3, -1, -1)
        logits = self.net((rgb * alpha + 1 - alpha) * 255)  # the network scales uint8-range pixels itself
        if self.head == "ctc":
            return logits
        b, n, k = logits.shape
        chars = torch.cat([torch.full((b, n, 1), -LARGE), logits], -1)  # never the blank
        blank = torch.cat([torch.zeros(b, n, 1), torch.full((b, n, k), -LARGE)], -1)  # only the blank
        return torch.stack([chars, blank], 2).flatten(1, 2)[:, : 2 * n - 1]  # char, blank, char, ...


def export_ddddocr(ckpt, output) -> tuple[Path, Path]:
    """OUT.onnx and OUT.charsets.json, for ddddocr.DdddOcr(ocr=False, det=False,
    import_onnx_path=OUT.onnx, charsets_path=OUT.charsets.json)."""
    spec, net = load_network(ckpt)
    stem = Path(output)
    stem = stem.with_suffix("") if stem.suffix == ".onnx" else stem
    onnx_path, charsets_path = Path(f"{stem}.onnx"), Path(f"{stem}.charsets.json")
    for path in (onnx_path, charsets_path):
        _refuse_overwriting_input(ckpt, path)
    if Path(f"{onnx_path}.json").exists():  # its contract would then describe a model of another input
        raise CaptchaError(f"{onnx_path}: a captcha-lit ONNX export is there ({onnx_path.name}.json beside it); "
                           f"name another output")
    graph = DdddocrGraph(net, spec.head).eval()
    _to_onnx(graph, torch.zeros(1, 3, spec.height, spec.width), onnx_path, {"images": {1: "channels"}})
    # image: ddddocr resizes to exactly [width, height]; channel 3: RGB, as the model was trained
    charsets = {"charset": [""] + list(spec.alphabet), "word": False, "image": [spec.width, spec.height], "channel": 3}
    atomic_write_text(charsets_path, json.dumps(charsets, ensure_ascii=False) + "\n")
    return onnx_path, charsets_path


def export_weights(ckpt, output) -> Path:
    """The checkpoint's hyperparameters and weights alone, floats in fp16 (half the size, nothing
    of the optimizer): a start for init_from=, as the packaged readers are."""
    output = Path(output)
    _refuse_overwriting_input(ckpt, output)
    hparams, state = read_checkpoint(ckpt)
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_path(output) as tmp:
        torch.save({"hyper_parameters": hparams, "state_dict": state}, tmp)
    return output


def int8_from_folder(ckpt, folder, output=None) -> str:
    spec = ModelSpec.read(read_checkpoint(ckpt)[0], str(ckpt))
    target = Path(output) if output else copy_path(ckpt)
    for path in (target, Path(f"{target}.json"), original_path(target)):  # before reading the images
        _refuse_overwriting_input(ckpt, path, folder)
    calibration, check = folder_images(folder, spec.task, spec.width, spec.height)
    path, same, re_read = export_int8(ckpt, calibration, check, output, folder)
    return f"{path}: reads as fp32 on {same} of {len(check)} images of {folder}{again(re_read)}"


def _images(ds, idx) -> np.ndarray:
    """Images `idx` of a dataset as (N, H, W, 3) uint8."""
    if isinstance(ds, ArrayDataset):
        return np.asarray(ds.images[np.sort(idx)])
    return np.stack([np.asarray(ds[i][0]) for i in idx])  # files or renderings, decoded one by one


def spread(n: int, count: int) -> np.ndarray:
    """Up to `count` indices spread evenly over range(n)."""
    return np.unique(np.linspace(0, n - 1, min(n, count)).astype(int))


def write_int8_copy(ckpt: Path, datamodule) -> None:
    """The checkpoint's int8 copy (int8.py), calibrated on up to 256 training images (the real ones
    where the run has any: what it will read) and checked against fp32 on up to 1,024 validation
    images (test images without a validation split, other training images without either). A
    failure costs the copy, not the run."""
    train_set = datamodule.train_set
    real = datamodule.real_train_size or len(train_set)  # real images come first in a mixed set
    held_out, what = next(((ds, name) for ds, name in ((datamodule.val_set, "validation"), (datamodule.test_set, "test"))
                           if ds is not None), (None, "training"))
    if held_out is not None:
        calibration, check = spread(real, 256), spread(len(held_out), 1024)
    else:
        both = spread(real, 1280)
        calibration, held_out = both[::5], train_set
        check = np.setdiff1d(both, calibration)
    if len(check) == 0:
        print(f"int8 copy: not written: no images to check it on; make one with: captcha-export {ckpt} --int8 IMAGES")
        return
    try:
        path, same, read_again = export_int8(ckpt, _images(train_set, calibration), _images(held_out, check))
    except Exception as e:  # the run's result stands without its copy
        log.warning(f"int8 copy not written ({type(e).__name__}: {e}); make one with: captcha-export {ckpt} --int8 IMAGES")
        return
    used = ("predict.py reads with it on CPUs with VNNI" if same >= AGREEMENT * len(check) else
            f"under {AGREEMENT:.1%}, so predict.py reads the checkpoint (precision=int8 forces the copy)")
    print(f"int8 copy: {path} reads as fp32 on {same} of {len(check)} {what} images{again(read_again)}: {used}")
