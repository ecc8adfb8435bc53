"""Export a checkpoint to ONNX: for captcha-lit's own reader (with a JSON contract beside it), or
for the ddddocr package.

    python -m captcha_lit.export CHECKPOINT [OUTPUT.onnx]              (or: captcha-export ...)
    python -m captcha_lit.export CHECKPOINT OUT --format ddddocr        -> OUT.onnx, OUT.charsets.json
    python -m captcha_lit.export CHECKPOINT --int8 IMAGES     -> CHECKPOINT's int8 copy, calibrated on IMAGES

captcha-lit's graph takes uint8 (B, 3, height, width) images and returns the model's logits;
scaling and normalisation are inside it. The contract (task, length, alphabet, size, head,
normalisation) lets onnxruntime users preprocess and decode without PyTorch.

ddddocr (1.6.x) feeds one float (1, 3, H, W) image of pixels / 255 and decodes greedily as CTC
with the blank at class 0. A CTC model is exported as it is; a per-position model emits a blank
step between its positions (2N - 1 steps), so that "f99f" is not merged into "f9f".
"""
import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_network, read_checkpoint
from .cli import run_reporting
from .errors import CaptchaError
from .files import atomic_path, atomic_write_text
from .images import IMAGE_SUFFIXES, load_image
from .int8 import copy_path, digest
from .reader import decode_logits

LARGE = 1e4  # a logit no softmax step can compete with


def _to_onnx(model: nn.Module, example: torch.Tensor, output: Path, dynamic_batch: bool) -> None:
    with atomic_path(output) as tmp:
        # the TorchScript exporter: it needs no extra package and handles this plain CNN
        torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
                          opset_version=17, dynamo=False)


def _example(hp: dict) -> torch.Tensor:
    """A batch of two blank uint8 images of the model's size, to trace the graph with."""
    return torch.zeros(2, 3, hp["height"], hp["width"], dtype=torch.uint8)


def _refuse_overwriting_input(ckpt, output: Path) -> None:
    """Output paths are checked before any work: never the checkpoint itself, never a folder."""
    if output.exists() and output.resolve() == Path(ckpt).resolve():
        raise CaptchaError(f"{output}: that is the checkpoint being exported; choose another output name")
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


def same_strings(net: nn.Module, model: Path, images: np.ndarray, head: str, alphabet: str) -> int:
    """How many of `images` ((N, H, W, 3) uint8) the ONNX model reads as the fp32 network does."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    same = 0
    for i in range(0, len(images), 64):
        batch = np.ascontiguousarray(images[i:i + 64].transpose(0, 3, 1, 2))
        with torch.inference_mode():
            fp32 = decode_logits(net(torch.from_numpy(batch)).numpy(), head, alphabet)[0]
        got = decode_logits(session.run(None, {"images": batch})[0], head, alphabet)[0]
        same += sum(a == b for a, b in zip(fp32, got))
    return same


def _write_contract(hp: dict, output: Path, **extra) -> None:
    contract = {key: hp[key] for key in ("task", "length", "alphabet", "width", "height", "head", "lowercase")}
    contract.update(mean=list(hp["mean"]), std=list(hp["std"]), input="uint8 (batch, 3, height, width) RGB",
                    output="logits (batch, steps, classes): positions: argmax per step indexes the alphabet; "
                           "ctc: class 0 is the blank, class i is alphabet[i - 1], merge repeats", **extra)
    atomic_write_text(output.with_suffix(output.suffix + ".json"), json.dumps(contract, indent=2) + "\n")


def export_onnx(ckpt, output=None) -> Path:
    """OUTPUT.onnx (default: beside the checkpoint) and its contract OUTPUT.onnx.json."""
    hp, net = load_network(ckpt)
    output = Path(output) if output else Path(ckpt).with_suffix(".onnx")
    _refuse_overwriting_input(ckpt, output)
    _to_onnx(net, _example(hp), output, dynamic_batch=True)
    _write_contract(hp, output, precision="fp32")
    return output


def export_int8(ckpt, calibration: np.ndarray, check: np.ndarray, output=None) -> tuple[Path, int]:
    """An int8 model calibrated on `calibration` images, and how many of `check` it reads as fp32
    does (both (N, H, W, 3) uint8). Default output: the checkpoint's int8 copy X.int8.onnx, which
    readers use in its place where it pays (int8.py); its contract records the checkpoint's sha256
    and the agreement."""
    made_from = digest(ckpt) if Path(ckpt).is_file() else None  # before reading: the contract names what was quantised
    hp, net = load_network(ckpt)
    output = Path(output) if output else copy_path(ckpt)
    _refuse_overwriting_input(ckpt, output)
    output.with_suffix(output.suffix + ".json").unlink(missing_ok=True)  # an old contract never describes the new model
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _to_onnx(net, _example(hp), fp32, dynamic_batch=True)
        quantize_int8(fp32, output, calibration)
    same = same_strings(net, output, check, hp["head"], hp["alphabet"])
    if digest(ckpt) != made_from:
        raise CaptchaError(f"{ckpt} changed while its int8 copy was made (a run still saving it?); export it again")
    _write_contract(hp, output, precision="int8", checkpoint_sha256=made_from,
                    agreement={"images": len(check), "same_string": same})
    return output, same


class DdddocrGraph(nn.Module):
    """Float pixels in [0, 1] -> CTC scores (1, steps, 1 + len(alphabet)), blank first."""

    def __init__(self, net, head: str):
        super().__init__()
        self.net, self.head = net, head

    def forward(self, pixels):
        logits = self.net(pixels * 255)  # the network scales uint8-range pixels itself
        if self.head == "ctc":
            return logits
        b, n, k = logits.shape
        chars = torch.cat([torch.full((b, n, 1), -LARGE), logits], -1)  # never the blank
        blank = torch.cat([torch.zeros(b, n, 1), torch.full((b, n, k), -LARGE)], -1)  # only the blank
        return torch.stack([chars, blank], 2).flatten(1, 2)[:, : 2 * n - 1]  # char, blank, char, ...


def export_ddddocr(ckpt, output) -> tuple[Path, Path]:
    """OUT.onnx and OUT.charsets.json, for ddddocr.DdddOcr(ocr=False, det=False,
    import_onnx_path=OUT.onnx, charsets_path=OUT.charsets.json)."""
    hp, net = load_network(ckpt)
    stem = Path(output)
    stem = stem.with_suffix("") if stem.suffix == ".onnx" else stem
    onnx_path, charsets_path = Path(f"{stem}.onnx"), Path(f"{stem}.charsets.json")
    for path in (onnx_path, charsets_path):
        _refuse_overwriting_input(ckpt, path)
    graph = DdddocrGraph(net, hp["head"]).eval()
    _to_onnx(graph, torch.zeros(1, 3, hp["height"], hp["width"]), onnx_path, dynamic_batch=False)
    # image: ddddocr resizes to exactly [width, height]; channel 3: RGB, as the model was trained
    charsets = {"charset": [""] + list(hp["alphabet"]), "word": False, "image": [hp["width"], hp["height"]], "channel": 3}
    atomic_write_text(charsets_path, json.dumps(charsets, ensure_ascii=False) + "\n")
    return onnx_path, charsets_path


def int8_from_folder(ckpt, folder, output=None) -> str:
    hp, _ = read_checkpoint(ckpt)
    calibration, check = folder_images(folder, hp["task"], hp["width"], hp["height"])
    path, same = export_int8(ckpt, calibration, check, output)
    return f"{path}: reads as fp32 on {same} of {len(check)} images of {folder}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="captcha-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a captcha-lit checkpoint (.ckpt)")
    parser.add_argument("output", nargs="?", help="the .onnx file (default: beside the checkpoint; with --int8 its "
                                                  "int8 copy CHECKPOINT.int8.onnx, which predict.py then reads with)")
    parser.add_argument("--format", choices=("onnx", "ddddocr"), default="onnx",
                        help="onnx: for captcha-lit's reader and onnxruntime; ddddocr: OUT.onnx + OUT.charsets.json")
    parser.add_argument("--int8", metavar="DIR", help="onnx: an int8 model, calibrated on up to 256 images of DIR "
                                                      "(or of DIR/TASK) and checked against fp32 on up to 1,024 "
                                                      "others: about twice as fast on CPUs with VNNI")
    args = parser.parse_args(argv)
    if args.format == "ddddocr":
        print(*run_reporting(export_ddddocr, args.ckpt, args.output or Path(args.ckpt).with_suffix("")), sep="\n")
    elif args.int8:
        print(run_reporting(int8_from_folder, args.ckpt, args.int8, args.output))
    else:
        print(run_reporting(export_onnx, args.ckpt, args.output))

if __name__ == "__main__":
    main()
