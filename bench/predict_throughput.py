"""Reading the competition's 10,000 test images: the reading paths side by side, on real images.

    python bench/predict_throughput.py --data ../shared/captcha-hacker-2022 --ckpt T1.ckpt T2.ckpt T3.ckpt
                                       [--old REV] [--compare T1 T2 T3] [--rounds 2]

1. The models alone. Every variant reads --n labelled images of each task from memory (decoded
   once, untimed), rounds alternating the variants. Per variant and task: images/s, agreement
   with fp32 eager (the training module in fp32: the reference) and exact match against the
   labels; then the time the competition's mix (6,500 task1, 2,500 task2, 1,000 task3) takes.
     eager-fp32  the training module, fp32: the reference
     today       the training module under bf16 autocast where the CPU has native bf16 (the
                 reading path before BatchNorm folding; what `--old` runs)
     fp32        this tree's reader with precision=32: BatchNorm folded, channels-last
     bf16        precision=bf16 (fp32 where the CPU has no native bf16): bf16 weights, channels-last;
                 the default of a checkpoint without an int8 copy
     onnx        the exported model in onnxruntime (fp32)
     int8        the checkpoint's int8 copy (captcha-export --int8: calibrated on 256 labelled
                 images, checked on up to 1,024 others), in onnxruntime; the default on CPUs with
                 VNNI when the copy agrees with fp32
2. End to end. A competition-style folder of 10,000 PNGs (the real mix of tasks and sizes, drawn
   with repetition from the labelled images) and its sample_submission.csv; `python predict.py`
   is timed on it, start-up included: this tree's default (the checkpoints with their int8
   copies), precision=bf16 and precision=32 (--runs picks), and, with --old REV, the predict.py of
   git revision REV (checked out into a temporary worktree, reading copies of the checkpoints
   that its module can load), and with --compare T1 T2 T3 the default of other checkpoints (say,
   a recipe at another image size; they get int8 copies too), alternating. The last line is
   `predict 10k: S s` (the first of --runs, median).
"""
import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from captcha_lit.model.checkpoint import load_module, read_checkpoint
from captcha_lit.reading.export import export_onnx, int8_from_folder
from captcha_lit.data.folders import read_labelled
from captcha_lit import hardware
from captcha_lit.model.spec import ModelSpec
from captcha_lit.data.images import load_image
from captcha_lit.reading.reader import CaptchaReader
from captcha_lit.data.tasks import preset

MIX = {"task1": 6500, "task2": 2500, "task3": 1000}  # the competition's test set
ROOT = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser()
parser.add_argument("--data", default=str(ROOT.parent / "shared" / "captcha-hacker-2022"))
parser.add_argument("--ckpt", nargs=3, required=True, help="task1, task2 and task3 checkpoints")
parser.add_argument("--rounds", type=int, default=2)
parser.add_argument("--n", type=int, default=1024, help="labelled images per task in the models-alone part")
parser.add_argument("--batch", type=int, default=32, help="the reader's batch size (predict.yaml's default)")
parser.add_argument("--old", help="a git revision whose predict.py is timed end to end beside this tree's, on copies "
                                   "of the checkpoints holding only the hyperparameters its module takes")
parser.add_argument("--runs", nargs="+", default=["default", "precision=bf16", "precision=32"],
                    help="this tree's end-to-end runs: 'default', or predict.py overrides in one argument "
                         "('precision=32 batch_size=16'); the first is the one the others are compared with. To time "
                         "an AVX2-only CPU on an AVX512 one, set ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 and "
                         "give --skip-models --runs precision=32 (what the default reads with there; onnxruntime "
                         "ignores those variables, so the int8 default cannot be emulated)")
parser.add_argument("--compare", nargs=3, help="task1, task2 and task3 checkpoints timed end to end beside --ckpt")
parser.add_argument("--skip-models", action="store_true", help="only the end-to-end runs")
parser.add_argument("--scale", type=float, default=1.0, help="end-to-end folder size as a share of 10,000 (a quick check)")
args = parser.parse_args()
tmp = Path(tempfile.mkdtemp(prefix="captcha-predict-bench-"))


def module_reader(path, autocast: bool) -> CaptchaReader:
    """A reader on the training module (BatchNorm not folded), in fp32 or under bf16 autocast,
    at the batch size predict.py used before (256)."""
    module = load_module(path)
    dtype = torch.bfloat16 if autocast and (hardware.cpu_bf16() is not None) else None

    @torch.inference_mode()
    def logits_fn(images):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return module(torch.from_numpy(images).movedim(-1, 1)).float().numpy()

    return CaptchaReader(logits_fn, module.spec, batch_size=256)


def with_int8_copy(ckpt, name: str) -> Path:
    """The checkpoint copied into the bench's folder, with its int8 copy beside it (captcha-export --int8)."""
    target = tmp / name / Path(ckpt).name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ckpt, target)
    print(int8_from_folder(target, args.data))
    return target


ckpts = {t: with_int8_copy(c, t) for t, c in zip(MIX, args.ckpt)}
items = {task: read_labelled(args.data, preset(task)) for task in MIX}
print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, native bf16: {(hardware.cpu_bf16() is not None)}, threads "
      f"{torch.get_num_threads()}, batch {args.batch}, rounds {args.rounds}; labelled images: "
      + ", ".join(f"{t} {len(v)}" for t, v in items.items()))

if not args.skip_models:
    sample = {t: v[:: max(1, len(v) // args.n)][:args.n] for t, v in items.items()}  # spread over the folder
    sizes = {t: (spec.width, spec.height) for t, c in ckpts.items() for spec in [ModelSpec.read(read_checkpoint(c)[0], c)]}
    arrays = {t: np.stack([load_image(p, *sizes[t]) for p, _ in v]) for t, v in sample.items()}  # at each model's size
    variants = {
        "eager-fp32": lambda c: module_reader(c, autocast=False),
        "today": lambda c: module_reader(c, autocast=True),
        "fp32": lambda c: CaptchaReader.from_checkpoint(c, precision="32", batch_size=args.batch),
        "bf16": lambda c: CaptchaReader.from_checkpoint(c, precision="bf16" if (hardware.cpu_bf16() is not None) else "32",
                                                        batch_size=args.batch),
        "onnx": lambda c: CaptchaReader.from_onnx(export_onnx(c, tmp / f"{Path(c).stem}-{len(os.listdir(tmp))}.onnx"),
                                                  batch_size=args.batch),
        # calibrated on 256 images spread over each task's labelled images, which the agreement
        # below also counts (256 of 1,554-2,408)
        "int8": lambda c: CaptchaReader.from_checkpoint(c, precision="int8", batch_size=args.batch),
    }
    readers = {(v, t): make(ckpts[t]) for v, make in variants.items() for t in MIX}
    for (_, t), r in readers.items():
        r.read(arrays[t][:16])  # warm-up: kernels are built
    seconds = {k: [] for k in readers}
    strings = {}
    for _ in range(args.rounds):
        for key, reader in readers.items():
            t0 = time.perf_counter()
            strings[key] = reader.read(arrays[key[1]])
            seconds[key].append(time.perf_counter() - t0)
    print(f"\n{'variant':<11}" + "".join(f"{t + ' img/s':>13}{'agree':>8}{'exact':>8}" for t in MIX)
          + f"{'10k mix s':>11}{'vs today':>9}")
    # seconds for the competition's mix: each task's count at that task's measured rate
    mix = {v: sum(n * statistics.median(seconds[v, t]) / len(sample[t]) for t, n in MIX.items()) for v in variants}
    for v in variants:
        row = f"{v:<11}"
        for t in MIX:
            labels = [label for _, label in sample[t]]
            agree = np.mean([a == b for a, b in zip(strings[v, t], strings["eager-fp32", t])])
            exact = np.mean([a == b for a, b in zip(strings[v, t], labels)])
            row += f"{len(labels) / statistics.median(seconds[v, t]):>13.0f}{agree:>8.4f}{exact:>8.4f}"
        print(row + f"{mix[v]:>11.1f}{mix['today'] / mix[v]:>8.2f}x")

# ---------------------------------------------------------------- end to end, start-up included
test = tmp / "test"
rng = np.random.default_rng(0)
rows = []
for task, n in MIX.items():
    n = round(n * args.scale)
    (test / task).mkdir(parents=True)
    for i, j in enumerate(rng.integers(0, len(items[task]), n)):
        shutil.copy(items[task][j][0], test / task / f"{i:05d}.png")
        rows.append([f"{task}/{i:05d}.png", "0"])
rows = [rows[i] for i in rng.permutation(len(rows))]  # tasks interleaved, as in the competition's file
with open(test / "sample_submission.csv", "w", newline="") as f:
    csv.writer(f).writerows([["filename", "label"]] + rows)

def listed(paths) -> str:
    return "ckpt=[" + ",".join(str(Path(p).resolve()) for p in paths) + "]"


def for_old_tree(tree: Path) -> list[Path]:
    """Copies of the checkpoints that an older revision can load: only the hyperparameters its
    CaptchaModule takes (those added since, such as low_res, only matter to training)."""
    code = ("import inspect, json; from captcha_lit.model.module import CaptchaModule; "
            "print(json.dumps(list(inspect.signature(CaptchaModule).parameters)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                         check=True, capture_output=True, text=True).stdout
    takes = set(json.loads(out.splitlines()[-1]))
    copies = []
    for task, path in ckpts.items():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        ckpt["hyper_parameters"] = {k: v for k, v in ckpt["hyper_parameters"].items() if k in takes}
        copies.append(tmp / "old-ckpts" / f"{task}.ckpt")
        copies[-1].parent.mkdir(exist_ok=True)
        torch.save(ckpt, copies[-1])
    return copies


runs = {name: (ROOT, [] if name == "default" else name.split()) for name in args.runs}
if args.compare:
    runs["compare: default"] = (ROOT, [listed(with_int8_copy(c, f"compare-{t}") for t, c in zip(MIX, args.compare))])
if args.old:
    old = tmp / "old"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.old], cwd=ROOT, check=True,
                   capture_output=True)
    runs[f"old {args.old}"] = (old, [listed(for_old_tree(old))])
wall = {k: [] for k in runs}
outputs = {}
try:
    for _ in range(args.rounds):
        for name, (tree, extra) in runs.items():
            out = tmp / f"{name.replace(' ', '_').replace('=', '_')}.csv"
            env = {**os.environ, "PYTHONPATH": str(tree)}  # the tree's own captcha_lit package
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "predict.py", listed(ckpts.values()), f"data_dir={test}", f"output={out}",
                            "progress=false"] + extra, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)  # a later ckpt= wins
            wall[name].append(time.perf_counter() - t0)
            outputs[name] = out.read_text()
finally:
    if args.old:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
first = args.runs[0]  # what the other runs are compared with
reference = "precision=32" if "precision=32" in runs else first  # whose rows the others should equal
base = outputs[reference].splitlines()
print(f"\npython predict.py on {len(rows):,} PNGs ({', '.join(f'{round(n * args.scale):,} {t}' for t, n in MIX.items())}), "
      f"start-up included:")
for name in runs:
    same = np.mean([a == b for a, b in zip(outputs[name].splitlines()[1:], base[1:])])
    agree = "other models" if name.startswith("compare") else f"rows as {reference}: {same:.4f}"
    ratio = statistics.median(wall[first]) / statistics.median(wall[name])
    print(f"  {name:<22} median {statistics.median(wall[name]):6.1f} s of {['%.1f' % w for w in wall[name]]}, "
          f"{agree}, {first} is {1 / ratio:.2f}x as fast")
shutil.rmtree(tmp, ignore_errors=True)
print(f"predict {len(rows) / 1000:g}k: {statistics.median(wall[first]):.1f} s ({first})")
