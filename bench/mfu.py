"""Model FLOP utilisation of the report's ResNet in training, against this machine's own matmul peak.

    python bench/mfu.py [--rounds 5] [--batch 32] [--steps 5] [--size 2048] [--device cpu|cuda]

FLOPs per image come from torch.utils.flop_counter.FlopCounterMode over one forward + backward
at a few batch sizes (it counts convolutions and matmuls; batch norm, ReLU and Adam are left
out, as MFU conventionally does). Achieved FLOP/s = those FLOPs x measured training img/s
(bf16 autocast + channels-last, as train.py runs it). The peaks are medians of square
torch.matmul in bf16 and fp32, measured in the same process.
"""
import argparse
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from captcha_lit.hardware import training_precision
from captcha_lit.model.module import CaptchaModule
from captcha_lit.data.tasks import preset

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--batch", type=int, default=32)
parser.add_argument("--steps", type=int, default=5, help="timed training steps per round")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--size", type=int, default=None, help="matmul side (default 2048 on CPU, 8192 on GPU)")
args = parser.parse_args()
dev = torch.device(args.device)
size = args.size or (8192 if dev.type == "cuda" else 2048)  # big enough to reach the device's peak
torch.backends.cudnn.benchmark = True

TASK = preset("task3")  # the largest input (96x72) and four heads
HP = dict(task=TASK.config())
torch.manual_seed(0)
module = CaptchaModule(**HP).to(dev).train()
opt = torch.optim.Adam(module.parameters(), lr=1e-3)


def batch(n):
    g = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 3, TASK.height, TASK.width), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, len(TASK.alphabet), (n, TASK.length), generator=g)
    return images.to(dev), targets.to(dev)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- FLOPs per training image
print(f"{'batch':>5} {'fwd GFLOP/img':>14} {'fwd+bwd GFLOP/img':>18}")
per_image = []
for n in (1, 2, 4):
    images, targets = batch(n)
    with FlopCounterMode(display=False) as counter:
        loss = module.loss(module(images), targets)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    total = forward + counter.get_total_flops()
    module.zero_grad(set_to_none=True)
    per_image.append(total / n)
    print(f"{n:>5} {forward / n / 1e9:>14.3f} {total / n / 1e9:>18.3f}")
flops_per_image = statistics.median(per_image)

# ---------------------------------------------------------------- achieved training FLOP/s and matmul peaks
precision, _ = training_precision("auto", "gpu" if dev.type == "cuda" else "cpu")  # what train.py picks
amp = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
images, targets = batch(args.batch)


def train_rate():
    t0 = time.perf_counter()
    for _ in range(args.steps):
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = module.loss(module(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return args.batch * args.steps / (time.perf_counter() - t0)


def matmul_rate(dtype, reps=3):
    a, b = (torch.randn(size, size, device=dev).to(dtype) for _ in range(2))
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    sync()
    return 2 * size**3 * reps / (time.perf_counter() - t0)


print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start (higher: shared)")
# warm-up: kernel selection, oneDNN primitive creation
train_rate(), matmul_rate(torch.bfloat16, 1), matmul_rate(torch.float32, 1)
rates = {"train img/s": [], "bf16": [], "fp32": []}
for r in range(args.rounds):  # interleaved, so drift (other load, clocks) hits all three alike
    rates["train img/s"].append(train_rate())
    rates["bf16"].append(matmul_rate(torch.bfloat16))
    rates["fp32"].append(matmul_rate(torch.float32))
    print(f"round {r}: train {rates['train img/s'][-1]:.1f} img/s, matmul bf16 {rates['bf16'][-1] / 1e9:.0f} "
          f"fp32 {rates['fp32'][-1] / 1e9:.0f} GFLOP/s")
med = {k: statistics.median(v) for k, v in rates.items()}
best = {k: max(v) for k, v in rates.items()}  # the least disturbed round, for a shared machine
achieved, achieved_best = flops_per_image * med["train img/s"], flops_per_image * best["train img/s"]
peak = med["bf16"] if amp is not None else med["fp32"]  # the dtype the convolutions actually run in

print(f"\ndevice={dev} torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch} "
      f"autocast={amp} channels_last={module.channels_last} input=96x72 task3")
print(f"{'quantity':<34} {'median':>10} {'best':>10}")
print(f"{'training GFLOP per image':<34} {flops_per_image / 1e9:>10.3f}")
print(f"{'training img/s':<34} {med['train img/s']:>10.1f} {best['train img/s']:>10.1f}")
print(f"{'achieved training GFLOP/s':<34} {achieved / 1e9:>10.1f} {achieved_best / 1e9:>10.1f}")
print(f"{f'matmul bf16 {size}^2 GFLOP/s':<34} {med['bf16'] / 1e9:>10.1f} {best['bf16'] / 1e9:>10.1f}")
print(f"{f'matmul fp32 {size}^2 GFLOP/s':<34} {med['fp32'] / 1e9:>10.1f} {best['fp32'] / 1e9:>10.1f}")
print(f"{'MFU vs bf16 peak':<34} {achieved / med['bf16']:>10.3f} {achieved_best / best['bf16']:>10.3f}")
print(f"{'MFU vs fp32 peak':<34} {achieved / med['fp32']:>10.3f} {achieved_best / best['fp32']:>10.3f}")
print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end (higher: shared)")
print(f"mfu: {achieved / peak:.3f}")
