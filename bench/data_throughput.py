"""Images/s delivered by each data source of captcha_lit.data.datasets, against what training consumes.

    python bench/data_throughput.py [--rounds 5] [--batch 64] [--batches 10] [--files 2000]
                                    [--style imagecaptcha|kaggle] [--device cpu|cuda]

(a) ImageCaptcha rendered on the fly (RenderedDataset, DataLoader with 0/1/2 workers),
(b) PNG files decoded from disk (FolderDataset; a fresh folder in a tempdir, so the page cache
    is warm: this is decode speed, not disk speed),
(c) the materialised in-memory ArrayDataset and the memory-mapped .npy cache, both through the
    datamodule's batched loader (one gather per batch, no workers).
The model's own training speed (plain bf16/channels-last loop, Adam) is measured in the same run.
"""
import argparse
import atexit
import csv
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from captcha_lit.data.datasets import ArrayDataset, FolderDataset, RenderedDataset, cached, collate
from captcha_lit.data.folders import read_labelled
from captcha_lit.hardware import training_precision
from captcha_lit.model.module import CaptchaModule
from captcha_lit.data.render import Renderer
from captcha_lit.data.seeded import sample_rng
from captcha_lit.data.tasks import preset

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--batch", type=int, default=64)
parser.add_argument("--batches", type=int, default=10, help="timed batches per loader run")
parser.add_argument("--files", type=int, default=2000, help="images in the folder and in the cache")
parser.add_argument("--model-steps", type=int, default=3, help="timed training steps per round")
parser.add_argument("--style", default="imagecaptcha", help="the renderer's style: imagecaptcha or kaggle")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()
if args.files < args.batch * (args.batches + 1):  # the folder and the cache serve each image once per timing
    parser.error(f"--files {args.files} is too few for {args.batches + 1} batches of {args.batch}: "
                 f"use --files {args.batch * (args.batches + 1)} or more")
dev = torch.device(args.device)

TASK = preset("task3")  # the largest input (96x72) and four heads
HP = dict(task=TASK.config())
renderer = Renderer(TASK.width, TASK.height, TASK.length, TASK.alphabet, style=args.style)
tmp = Path(tempfile.mkdtemp(prefix="captcha-bench-"))
atexit.register(shutil.rmtree, tmp, ignore_errors=True)


def write_png(i):
    img, label = renderer.render(sample_rng(0, "bench", i))
    name = f"task3/{i:06d}.png"
    Image.fromarray(img).save(tmp / name)
    return name, label


# ---------------------------------------------------------------- build the sources (untimed)
t = time.perf_counter()
(tmp / "task3").mkdir()
with mp.get_context("fork").Pool(2) as pool:
    rows = pool.map(write_png, range(args.files), chunksize=64)
with open(tmp / "annotations.csv", "w", newline="") as f:
    csv.writer(f).writerows([("filename", "label"), *rows])
folder = FolderDataset(read_labelled(tmp, TASK), TASK.width, TASK.height, TASK.alphabet, TASK.length)
print(f"wrote {args.files} PNGs in {time.perf_counter() - t:.1f}s")
t = time.perf_counter()
# renders on 2 processes, saves .npy files, and hands them back memory-mapped (np.load(mmap_mode="r"))
memmapped = cached(RenderedDataset(renderer, args.files, 0, "bench"), tmp / "cache", processes=2)
in_memory = ArrayDataset(np.array(memmapped.images), np.array(memmapped.targets))
print(f"rendered the {args.files}-image cache in {time.perf_counter() - t:.1f}s")


def batched(ds):  # CaptchaDataModule._loader for ArrayDatasets
    return DataLoader(ds, batch_size=None, sampler=BatchSampler(RandomSampler(ds), args.batch, drop_last=True))


def per_item(ds, workers):  # CaptchaDataModule._loader for everything else
    return DataLoader(ds, args.batch, shuffle=True, num_workers=workers, collate_fn=collate)


sources = {
    "render, 0 workers": lambda: per_item(RenderedDataset(renderer, 10**6, 0, "train"), 0),
    "render, 1 worker": lambda: per_item(RenderedDataset(renderer, 10**6, 0, "train"), 1),
    "render, 2 workers": lambda: per_item(RenderedDataset(renderer, 10**6, 0, "train"), 2),
    "png, 0 workers": lambda: per_item(folder, 0),
    "png, 1 worker": lambda: per_item(folder, 1),
    "png, 2 workers": lambda: per_item(folder, 2),
    "array (in memory)": lambda: batched(in_memory),
    "cache (.npy memmap)": lambda: batched(memmapped),
}


def time_loader(make):
    """img/s over `batches` batches, counted from the first batch (worker start-up excluded)."""
    it = iter(make())
    next(it)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    seconds = time.perf_counter() - t0
    del it  # shuts the workers down
    return args.batch * args.batches / seconds


# ---------------------------------------------------------------- the model, as train.py would run it
precision, _ = training_precision("auto", "gpu" if dev.type == "cuda" else "cpu")
dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
torch.manual_seed(0)
module = CaptchaModule(**HP).to(dev).train()
opt = torch.optim.Adam(module.parameters(), lr=1e-3)
images, targets = next(iter(batched(in_memory)))
images, targets = images.to(dev), targets.to(dev)


def train_step():
    with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
        loss = module.loss(module(images), targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_model():
    train_step()  # warm-up (the first round's also builds the oneDNN primitives)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.model_steps):
        train_step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return args.batch * args.model_steps / (time.perf_counter() - t0)


# ---------------------------------------------------------------- rounds, every source side by side
print(f"device={dev} batch={args.batch} timed batches={args.batches} rounds={args.rounds} input=96x72 task3 "
      f"style={args.style} cpus={torch.get_num_threads()}")
print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start (higher: shared)")
rates = {name: [] for name in [*sources, "model (training)"]}
for r in range(args.rounds):
    for name, make in sources.items():
        rates[name].append(time_loader(make))
    rates["model (training)"].append(time_model())
    print(f"round {r}: " + ", ".join(f"{k.split(' (')[0]}={v[-1]:.0f}" for k, v in rates.items()))

ips = {k: statistics.median(v) for k, v in rates.items()}
best = {k: max(v) for k, v in rates.items()}  # the least disturbed round, for a shared machine
model = ips["model (training)"]
print(f"\n{'source':<22} {'img/s':>10} {'best':>10} {'x model':>9}")
for k, v in ips.items():
    print(f"{k:<22} {v:>10.0f} {best[k]:>10.0f} {v / model:>8.2f}x")
print(f"(model: {precision}, batch {args.batch}, Adam, on {dev})")
print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end (higher: shared)")
print(f"cache/model: {ips['cache (.npy memmap)'] / model:.1f}")
