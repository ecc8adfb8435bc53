#!/usr/bin/env python3
"""Load on captcha-serve over loopback, against CaptchaReader.read in-process on the same images.

    python bench/serve_load.py [--ckpt CKPT] [--clients 32] [--seconds 60] [--requests 20000]

Starts `captcha-serve ckpt=CKPT port=0` (default: the packaged task1 reader), then measures:
1. in-process: CaptchaReader.read over the images in batches of 64 (images/s, median of 3 passes);
2. one client, one image a request, one at a time: p50 and p99 latency;
3. --clients concurrent clients (threads, keep-alive connections), one image a request, for
   --seconds: requests/s, p50/p99 latency, errors, and the ratio to (1);
4. the server's resident memory before and after --requests requests.
The clients run on the same cores as the server: their HTTP work is part of what is measured.
"""
import argparse
import base64
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from captcha_lit import CaptchaReader
from captcha_lit.model.packaged import model_path
from captcha_lit.data.render import Renderer
from captcha_lit.data.seeded import sample_rng
from captcha_lit.model.spec import ModelSpec
from captcha_lit.model.checkpoint import read_checkpoint

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--ckpt", default="pretrained:task1")
parser.add_argument("--clients", type=int, default=32)
parser.add_argument("--seconds", type=float, default=60)
parser.add_argument("--requests", type=int, default=20000, help="for the memory check")
parser.add_argument("--images", type=int, default=256, help="rendered images of the model's task")
parser.add_argument("--no-int8", action="store_true", help="read the checkpoint as it is (default: a copy of it "
                                                           "with its int8 copy, as every trained run has)")
args = parser.parse_args()

spec = ModelSpec.read(read_checkpoint(model_path(args.ckpt))[0], args.ckpt)
renderer = Renderer(spec.width, spec.height, spec.length, spec.alphabet)
arrays = [renderer.render(sample_rng(0, "serve", i))[0] for i in range(args.images)]
if not args.no_int8:  # what training leaves beside every checkpoint: its int8 copy, read where the CPU has VNNI
    from captcha_lit.reading.export import export_int8
    copy = Path(tempfile.mkdtemp()) / "model.ckpt"
    shutil.copyfile(model_path(args.ckpt), copy)
    calibration = np.stack([renderer.render(sample_rng(1, "calibrate", i))[0] for i in range(256)])
    export_int8(copy, calibration, np.stack(arrays))
    args.ckpt = str(copy)
bodies = []
for a in arrays:
    buffer = __import__("io").BytesIO()
    Image.fromarray(a).save(buffer, "PNG")
    bodies.append(json.dumps({"images": [base64.b64encode(buffer.getvalue()).decode()]}).encode())

reader = CaptchaReader.from_checkpoint(args.ckpt, batch_size=64)
rates = []
for _ in range(3):
    start = time.perf_counter()
    expected = reader.read(arrays)
    rates.append(len(arrays) / (time.perf_counter() - start))
in_process = statistics.median(rates)
print(f"in-process CaptchaReader.read, batch 64 ({reader.precision}): {in_process:.0f} images/s")
del reader

proc = subprocess.Popen([sys.executable, "-c", "from captcha_lit.commands.cli import serve; serve()", f"ckpt={args.ckpt}",
                         "port=0", f"queue_size={max(256, 4 * args.clients)}"], stdout=subprocess.PIPE, text=True)
line = ""
while "serving" not in line:
    line = proc.stdout.readline()
    if proc.poll() is not None:
        sys.exit("the server did not start")
port = int(line.split("127.0.0.1:")[1].split()[0])


def rss_mb() -> float:
    for row in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return float("nan")


def client(deadline: float, count: int, start_index: int, latencies: list, errors: list, wrong: list):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = start_index
    while time.perf_counter() < deadline and count != 0:
        k = i % len(bodies)
        t = time.perf_counter()
        try:
            conn.request("POST", "/read", bodies[k], {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
        except OSError as e:
            errors.append(repr(e))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        latencies.append(time.perf_counter() - t)
        if response.status != 200:
            errors.append(response.status)
        elif json.loads(payload)["results"][0]["text"] != expected[k]:
            wrong.append(k)
        i, count = i + 1, count - 1
    conn.close()


def run(clients: int, seconds: float, per_client: int = -1):
    latencies, errors, wrong = [], [], []
    deadline = time.perf_counter() + seconds
    threads = [threading.Thread(target=client, args=(deadline, per_client, c * 7, latencies, errors, wrong))
               for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return len(latencies) / wall, np.percentile(ms, 50), np.percentile(ms, 99), errors, wrong


try:
    run(4, 3)  # warm-up
    _, p50, p99, errors, wrong = run(1, 30, per_client=300)
    print(f"1 client, one image at a time: p50 {p50:.1f} ms, p99 {p99:.1f} ms, errors {len(errors)}, "
          f"misread {len(wrong)}")
    rate, p50, p99, errors, wrong = run(args.clients, args.seconds)
    print(f"{args.clients} clients for {args.seconds:g} s: {rate:.0f} requests/s ({rate / in_process:.2f} of "
          f"in-process), p50 {p50:.1f} ms, p99 {p99:.1f} ms, errors {len(errors)}, misread {len(wrong)}")
    before = rss_mb()
    per = max(1, args.requests // args.clients)
    run(args.clients, 3600, per_client=per)
    after = rss_mb()
    print(f"resident memory over {per * args.clients} requests: {before:.0f} -> {after:.0f} MB "
          f"({after - before:+.0f} MB)")
finally:
    proc.terminate()
    proc.wait(30)
