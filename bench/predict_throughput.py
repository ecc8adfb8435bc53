"""Prediction throughput of captcha_lit.reader.CaptchaReader: PyTorch eager vs onnxruntime.

    python bench/predict_throughput.py [--n 1000] [--rounds 3] [--batch 256] [--workers 2]
                                       [--device cpu|cuda] [--no-cli]

An untrained task3 model (96x72, 4 characters of 0-9a-z) is saved as a checkpoint and exported
to ONNX; speed does not depend on the weights. Each backend reads --n in-memory uint8 arrays
(the model alone) and --n PNG files (decoding included, on --workers processes), rounds
alternating the backends. Last, `python predict.py` runs once per backend on the PNG folder,
timed end to end (interpreter start, imports and model loading included). The default --n
keeps the run near two minutes on 2 CPU cores; the table also projects each rate to the
competition's 10,000 test images, and --n 10000 --rounds 1 measures them for real.
"""
import argparse
import atexit
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from captcha_lit.export import export_onnx
from captcha_lit.module import CaptchaModule
from captcha_lit.reader import CaptchaReader
from captcha_lit.render import Renderer, sample_rng
from captcha_lit.tasks import preset

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=1000, help="images per measurement (the competition's test set: 10000)")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--batch", type=int, default=256, help="the reader's batch size (predict.yaml's default)")
parser.add_argument("--workers", type=int, default=2, help="PNG-decoding processes (predict.yaml's default)")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for the eager model")
parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end `python predict.py` runs")
args = parser.parse_args()

TASK = preset("task3")  # the largest input (96x72) and four heads
HP = dict(task=TASK.name, length=TASK.length, alphabet=TASK.alphabet, width=TASK.width, height=TASK.height)
tmp = Path(tempfile.mkdtemp(prefix="captcha-bench-"))
atexit.register(shutil.rmtree, tmp, ignore_errors=True)
renderer = Renderer(HP["width"], HP["height"], HP["length"], HP["alphabet"])


def render_png(i):
    img, _ = renderer.render(sample_rng(0, "bench", i))
    Image.fromarray(img).save(tmp / "task3" / f"{i:06d}.png")
    return img


# ---------------------------------------------------------------- model files and data (untimed)
torch.manual_seed(0)
module = CaptchaModule(**HP)
ckpt = tmp / "task3.ckpt"
# all that checkpoint.load_module reads: the weights and the constructor arguments
torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
onnx = export_onnx(ckpt, tmp / "task3.onnx")
t = time.perf_counter()
(tmp / "task3").mkdir()
with mp.get_context("fork").Pool(os.cpu_count()) as pool:
    arrays = pool.map(render_png, range(args.n), chunksize=64)
paths = sorted((tmp / "task3").glob("*.png"))
print(f"rendered {args.n} images and wrote them as PNGs in {time.perf_counter() - t:.1f}s")

readers = {
    "torch": lambda w: CaptchaReader.from_checkpoint(ckpt, device=args.device, batch_size=args.batch, num_workers=w),
    "onnx": lambda w: CaptchaReader.from_onnx(onnx, batch_size=args.batch, num_workers=w),
}
inputs = {"arrays": (arrays, 0), "png": (paths, args.workers)}
readers["torch"](0).read(arrays[:args.batch])  # warm-up: oneDNN builds its kernels on the first batches
readers["onnx"](0).read(arrays[:args.batch])

# ---------------------------------------------------------------- rounds, backends side by side
print(f"torch={torch.__version__} eager device={args.device} (precision auto), onnxruntime CPU; "
      f"n={args.n} batch={args.batch} png workers={args.workers} rounds={args.rounds}")
print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start (higher: shared)")
rates = {(b, i): [] for i in inputs for b in readers}
for r in range(args.rounds):
    for (backend, what), got in rates.items():
        images, workers = inputs[what]
        reader = readers[backend](workers)
        t0 = time.perf_counter()
        reader.read(images)
        got.append(len(images) / (time.perf_counter() - t0))
    print(f"round {r}: " + ", ".join(f"{b}/{i}={v[-1]:.0f}" for (b, i), v in rates.items()) + " img/s")

# ---------------------------------------------------------------- python predict.py, end to end
cli = {}
if not args.no_cli:
    root = Path(__file__).resolve().parents[1]
    for backend, model in (("torch", ckpt), ("onnx", onnx)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "predict.py", f"ckpt={model}", f"data_dir={tmp}", f"output={tmp}/sub.csv",
                        f"device={args.device}", f"batch_size={args.batch}", f"num_workers={args.workers}",
                        "progress=false"], cwd=root, check=True, stdout=subprocess.DEVNULL)
        cli[backend] = time.perf_counter() - t0

ips = {k: statistics.median(v) for k, v in rates.items()}
best = {k: max(v) for k, v in rates.items()}  # the least disturbed round, for a shared machine
print(f"\n{'path':<26} {'torch img/s':>12} {'onnx img/s':>11} {'onnx/torch':>11} {'10k: torch s':>13} {'onnx s':>7}")
rows = [(name, ips["torch", what], ips["onnx", what], 10000 / ips["torch", what], 10000 / ips["onnx", what])
        for name, what in (("in-memory uint8 arrays", "arrays"), (f"PNG files, {args.workers} decoders", "png"))]
if cli:
    # the CLI's fixed cost (interpreter, imports, model loading) is what its run took beyond the PNG rate;
    # its 10k figure is that cost plus 10,000 images at the PNG rate
    startup = {b: cli[b] - args.n / ips[b, "png"] for b in cli}
    rows.append(("python predict.py", args.n / cli["torch"], args.n / cli["onnx"],
                 startup["torch"] + 10000 / ips["torch", "png"], startup["onnx"] + 10000 / ips["onnx", "png"]))
for name, a, b, ta, tb in rows:
    print(f"{name:<26} {a:>12.0f} {b:>11.0f} {b / a:>10.2f}x {ta:>13.1f} {tb:>7.1f}")
if cli:
    print(f"python predict.py on {args.n} PNGs: torch {cli['torch']:.1f}s, onnx {cli['onnx']:.1f}s, of which start-up "
          f"(interpreter, imports, model loading) about {startup['torch']:.1f}s and {startup['onnx']:.1f}s")
print(f"best rounds, arrays: torch {best['torch', 'arrays']:.0f}, onnx {best['onnx', 'arrays']:.0f} img/s; "
      f"png: torch {best['torch', 'png']:.0f}, onnx {best['onnx', 'png']:.0f} img/s")
print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end (higher: shared)")
print(f"onnx/torch: {ips['onnx', 'arrays'] / ips['torch', 'arrays']:.2f}")
