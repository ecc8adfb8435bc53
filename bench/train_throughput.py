"""Training images/s: CaptchaModule through pytorch_lightning.Trainer vs a plain PyTorch loop.

    python bench/train_throughput.py [--rounds 5] [--batch 32] [--steps 5] [--device cpu|cuda]

Both sides train the same ResNet (same constructor arguments, same seed), with Adam(lr=1e-3),
on the same uint8 batches already in memory, served by the same batched DataLoader the
datamodule uses for in-memory data. Only steady-state steps are timed: each run does --warmup
steps first. Rounds alternate the variants so that drift hits them all alike; the table shows
medians, and the best round (on a shared machine, the least disturbed one). The Lightning side
also runs what training_step does besides the loss (summing the loss, and exact match on every
10th batch, log_every_n_steps as conf/trainer/default.yaml sets it). The plain
loop also runs in the --precisions given (fp32 NCHW vs bf16 channels-last); a variant ending in
"+compile" is the same loop with the network under torch.compile (train.py's compile=true).
"""
import argparse
import logging
import os
import statistics
import time
import warnings
from functools import partial

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from captcha_lit.data.datasets import ArrayDataset
from captcha_lit.hardware import training_precision
from captcha_lit.model.module import CaptchaModule
from captcha_lit.model.net import ResNet
from captcha_lit.data.tasks import preset

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--precisions", default="bf16-cl,fp32-nchw",
                    help="plain-loop variants: {fp32,bf16}-{nchw,cl}[+compile]; the one matching Lightning is always added")
args = parser.parse_args()
warnings.filterwarnings("ignore")  # Lightning's advice on num_workers, logging, etc.
for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(name).setLevel(logging.ERROR)  # and its banners (GPU available, AMP, tips)
dev = torch.device(args.device)
torch.backends.cudnn.benchmark = True  # what conf/trainer/default.yaml sets (benchmark: true)

TASK = preset("task3")  # the largest input (96x72) and four heads
HP = dict(task=TASK.config())
accelerator = "gpu" if dev.type == "cuda" else "cpu"
precision, _ = training_precision("auto", accelerator)  # what train.py picks: bf16-mixed on this CPU
amp = {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(precision, "fp32")  # (16-mixed: GradScaler left out)
matching = f"{amp}-cl"  # the module trains channels-last (its widths are all >= 16)
variants = ["lightning", matching] + [p for p in args.precisions.split(",") if p and p != matching]

# one epoch holds every step of a run, so no epoch-end work (logging the epoch's figures) falls inside it
n = args.batch * (args.warmup + args.steps)
rng = np.random.default_rng(0)
data = ArrayDataset(rng.integers(0, 256, (n, TASK.height, TASK.width, 3), dtype=np.uint8),
                    rng.integers(0, len(TASK.alphabet), (n, TASK.length)))
# pinned on a GPU, as the datamodule does (data.pin_memory=null): the copy to the GPU does not block the host
loader = DataLoader(data, batch_size=None, sampler=BatchSampler(RandomSampler(data), args.batch, drop_last=True),
                    pin_memory=dev.type == "cuda")


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


class StepTimer(pl.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == args.warmup:
            sync()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == args.warmup + args.steps - 1:
            sync()
            self.seconds = time.perf_counter() - self.t0


torch.manual_seed(0)
module = CaptchaModule(**HP, optimizer=partial(torch.optim.Adam, lr=1e-3))


def run_lightning():
    timer = StepTimer()
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=args.warmup + args.steps,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=10,
                         benchmark=dev.type == "cuda", callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds


# the plain side: the module's network and preprocessing, written out without Lightning
nets = {}
for v in variants[1:]:
    torch.manual_seed(0)
    net = ResNet(TASK.length, len(TASK.alphabet)).to(dev)
    if "-cl" in v:
        net = net.to(memory_format=torch.channels_last)
    if v.endswith("+compile"):
        net.compile()  # compiled on its first (warm-up) step, outside the timed steps
    nets[v] = (net, torch.optim.Adam(net.parameters(), lr=1e-3))


def run_plain(variant):
    net, opt = nets[variant]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[variant.split("-")[0]]
    layout = torch.channels_last if "-cl" in variant else torch.contiguous_format
    net.train()
    for i, (images, targets) in enumerate(loader):
        if i == args.warmup:
            sync()
            t0 = time.perf_counter()
        images, targets = images.to(dev, non_blocking=True), targets.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            x = ((images.float() / 255 - 0.5) / 0.5).contiguous(memory_format=layout)  # the module's normalisation
            logits = net(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()) * TASK.length
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return time.perf_counter() - t0


print(f"device={dev} torch={torch.__version__} threads={torch.get_num_threads()} lightning precision={precision}")
print(f"batch={args.batch} warmup={args.warmup} timed steps={args.steps} rounds={args.rounds} input=96x72 task3")
print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start (higher: shared)")
times = {v: [] for v in variants}
for r in range(args.rounds):
    for v in variants:
        times[v].append(run_lightning() if v == "lightning" else run_plain(v))
    print(f"round {r}: " + "  ".join(f"{v}={args.batch * args.steps / times[v][-1]:.1f}" for v in variants) + " img/s")

ips = {v: args.batch * args.steps / statistics.median(t) for v, t in times.items()}
best = {v: args.batch * args.steps / min(t) for v, t in times.items()}  # least disturbed round (shared machine)
print(f"\n{'variant':<38} {'img/s':>7} {'best':>7} {'ms/step':>8} {'vs plain ' + matching:>16}")
for v in variants:
    dtype, layout = v.split("+")[0].split("-") if v != "lightning" else (precision, "cl")
    what = f"{'Trainer' if v == 'lightning' else 'plain'}, {dtype}, {'channels-last' if layout == 'cl' else 'NCHW'}"
    what += ", compiled" if v.endswith("+compile") else ""
    print(f"{what:<38} {ips[v]:>7.1f} {best[v]:>7.1f} {1000 * args.batch / ips[v]:>8.1f} "
          f"{ips[v] / ips[matching]:>15.2f}x")
if "fp32-nchw" in ips and "bf16-cl" in ips:
    print(f"plain bf16 channels-last / fp32 NCHW: {ips['bf16-cl'] / ips['fp32-nchw']:.2f}x (medians), "
          f"{best['bf16-cl'] / best['fp32-nchw']:.2f}x (best rounds)")
print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end (higher: shared)")
print(f"lightning/plain: {ips['lightning'] / ips[matching]:.3f}")
