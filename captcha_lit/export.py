"""Export a checkpoint to ONNX: for captcha-lit's own reader (with a JSON contract beside it), or
for the ddddocr package.

    python -m captcha_lit.export CHECKPOINT [OUTPUT.onnx]              (or: captcha-export ...)
    python -m captcha_lit.export CHECKPOINT OUT --format ddddocr        -> OUT.onnx, OUT.charsets.json
    python -m captcha_lit.export CHECKPOINT OUT.onnx --int8 IMAGES      -> an int8 model calibrated on IMAGES

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

from .checkpoint import load_network
from .cli import run_reporting
from .errors import CaptchaError
from .files import atomic_path, atomic_write_text
from .images import IMAGE_SUFFIXES, load_image

LARGE = 1e4  # a logit no softmax step can compete with


def _to_onnx(model: nn.Module, example: torch.Tensor, output: Path, dynamic_batch: bool) -> None:
    with atomic_path(output) as tmp:
        # the TorchScript exporter: it needs no extra package and handles this plain CNN
        torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
                          opset_version=17, dynamo=False)


def _refuse_overwriting_input(ckpt, output: Path) -> None:
    """Output paths are checked before any work: never the checkpoint itself, never a folder."""
    if output.exists() and output.resolve() == Path(ckpt).resolve():
        raise CaptchaError(f"{output}: that is the checkpoint being exported; choose another output name")
    if output.is_dir():
        raise CaptchaError(f"{output}: is a folder; give the output file's name")
    if not output.parent.is_dir():
        raise CaptchaError(f"{output}: its folder {output.parent} does not exist")


def calibration_images(folder, task: str, width: int, height: int, count: int = 256) -> np.ndarray:
    """Up to `count` images spread over `folder` (its `task` subfolder when it has one), as a
    uint8 (N, 3, height, width) array."""
    folder = Path(folder)
    folder = folder / task if (folder / task).is_dir() else folder
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CaptchaError(f"--int8 {folder}: no images to calibrate on; give a folder of the task's images")
    paths = paths[:: max(1, len(paths) // count)][:count]
    return np.stack([load_image(p, width, height) for p in paths]).transpose(0, 3, 1, 2)


def quantize_int8(fp32: Path, output: Path, images: np.ndarray) -> None:
    """A static int8 (QDQ) copy of an exported model: per-channel int8 weights, uint8 activations
    whose ranges are measured on `images`. onnxruntime runs it with the CPU's int8 dot products
    (VNNI), about twice its bf16 speed here; its agreement with fp32 is measured in
    bench/predict_throughput.py."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": images[i:i + 32]} for i in range(0, len(images), 32)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp, atomic_path(output) as out:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))  # shapes inferred and the graph simplified, as advised
        quantize_static(str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def export_onnx(ckpt, output=None, int8_images=None) -> Path:
    """OUTPUT.onnx and its contract OUTPUT.onnx.json; with int8_images (a folder), an int8 model
    calibrated on up to 256 of its images."""
    hp, net = load_network(ckpt)
    output = Path(output) if output else Path(ckpt).with_suffix(".onnx")
    _refuse_overwriting_input(ckpt, output)
    example = torch.zeros(2, 3, hp["height"], hp["width"], dtype=torch.uint8)
    if int8_images is None:
        _to_onnx(net, example, output, dynamic_batch=True)
    else:
        images = calibration_images(int8_images, hp["task"], hp["width"], hp["height"])
        with tempfile.TemporaryDirectory() as tmp:
            _to_onnx(net, example, Path(tmp) / "fp32.onnx", dynamic_batch=True)
            quantize_int8(Path(tmp) / "fp32.onnx", output, images)
    contract = {key: hp[key] for key in ("task", "length", "alphabet", "width", "height", "head", "lowercase")}
    contract["precision"] = "fp32" if int8_images is None else "int8"
    contract.update(mean=list(hp["mean"]), std=list(hp["std"]), input="uint8 (batch, 3, height, width) RGB",
                    output="logits (batch, steps, classes): positions: argmax per step indexes the alphabet; "
                           "ctc: class 0 is the blank, class i is alphabet[i - 1], merge repeats")
    atomic_write_text(output.with_suffix(output.suffix + ".json"), json.dumps(contract, indent=2) + "\n")
    return output


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="captcha-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a captcha-lit checkpoint (.ckpt)")
    parser.add_argument("output", nargs="?", help="the .onnx file (default: beside the checkpoint)")
    parser.add_argument("--format", choices=("onnx", "ddddocr"), default="onnx",
                        help="onnx: for captcha-lit's reader and onnxruntime; ddddocr: OUT.onnx + OUT.charsets.json")
    parser.add_argument("--int8", metavar="DIR", help="onnx: an int8 model, calibrated on up to 256 images of DIR "
                                                      "(or of DIR/TASK): about twice as fast on CPUs with VNNI")
    args = parser.parse_args(argv)
    if args.format == "ddddocr":
        print(*run_reporting(export_ddddocr, args.ckpt, args.output or Path(args.ckpt).with_suffix("")), sep="\n")
    else:
        print(run_reporting(export_onnx, args.ckpt, args.output, args.int8))

if __name__ == "__main__":
    main()
