"""Export a checkpoint to ONNX, with its preprocessing contract in a JSON file beside it.

    python -m captcha_lit.export CHECKPOINT [OUTPUT.onnx]     (or: captcha-export ...)

The graph takes uint8 (B, 3, height, width) images and returns (B, length, classes) logits;
scaling and normalisation are inside it. The contract (task, length, alphabet, size,
normalisation) lets onnxruntime users preprocess and decode without PyTorch.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from .checkpoint import load_module
from .errors import CaptchaError
from .io import atomic_path, atomic_write_text


def export_onnx(ckpt, output=None) -> Path:
    module = load_module(ckpt).float()
    hp = module.hparams
    output = Path(output) if output else Path(ckpt).with_suffix(".onnx")
    example = torch.zeros(2, 3, hp.height, hp.width, dtype=torch.uint8)
    with atomic_path(output) as tmp:
        # the TorchScript exporter: it needs no extra package and handles this plain CNN
        torch.onnx.export(module, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    contract = {key: hp[key] for key in ("task", "length", "alphabet", "width", "height")}
    contract.update(mean=list(hp.mean), std=list(hp.std), input="uint8 (batch, 3, height, width) RGB",
                    output="logits (batch, length, len(alphabet)); argmax per position indexes the alphabet")
    atomic_write_text(output.with_suffix(output.suffix + ".json"), json.dumps(contract, indent=2) + "\n")
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(prog="captcha-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a captcha-lit checkpoint (.ckpt)")
    parser.add_argument("output", nargs="?", help="the .onnx file (default: beside the checkpoint)")
    args = parser.parse_args(argv)
    try:
        print(export_onnx(args.ckpt, args.output))
    except CaptchaError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
