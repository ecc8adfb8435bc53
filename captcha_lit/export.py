"""Export a checkpoint to ONNX: for captcha-lit's own reader (with a JSON contract beside it), or
for the ddddocr package.

    python -m captcha_lit.export CHECKPOINT [OUTPUT.onnx]              (or: captcha-export ...)
    python -m captcha_lit.export CHECKPOINT OUT --format ddddocr        -> OUT.onnx, OUT.charsets.json

captcha-lit's graph takes uint8 (B, 3, height, width) images and returns the model's logits;
scaling and normalisation are inside it. The contract (task, length, alphabet, size, head,
normalisation) lets onnxruntime users preprocess and decode without PyTorch.

ddddocr (1.6.x) feeds one float (1, 3, H, W) image of pixels / 255 and decodes greedily as CTC
with the blank at class 0. A CTC model is exported as it is; a per-position model emits a blank
step between its positions (2N - 1 steps), so that "f99f" is not merged into "f9f".
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_network
from .cli import run_reporting
from .errors import CaptchaError
from .files import atomic_path, atomic_write_text

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


def export_onnx(ckpt, output=None) -> Path:
    hp, net = load_network(ckpt)
    output = Path(output) if output else Path(ckpt).with_suffix(".onnx")
    _refuse_overwriting_input(ckpt, output)
    _to_onnx(net, torch.zeros(2, 3, hp["height"], hp["width"], dtype=torch.uint8), output, dynamic_batch=True)
    contract = {key: hp[key] for key in ("task", "length", "alphabet", "width", "height", "head", "lowercase")}
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
    args = parser.parse_args(argv)
    if args.format == "ddddocr":
        print(*run_reporting(export_ddddocr, args.ckpt, args.output or Path(args.ckpt).with_suffix("")), sep="\n")
    else:
        print(run_reporting(export_onnx, args.ckpt, args.output))

if __name__ == "__main__":
    main()
