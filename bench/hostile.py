#!/usr/bin/env python
"""Hostile inputs against every console entry point, run as a user runs them (subprocesses), each
outcome classified:

    CODE       the marker file a payload would create if it ran exists afterwards
    HANG       did not finish within the case's timeout (a named pipe where a file is expected...)
    REPLACED   a protected input (images, CSVs, checkpoints, int8 copies, contracts, link targets,
               another run's folder) changed or disappeared
    TRACEBACK  "Traceback" in the output, or an exit code other than 0, 2, 130, 143 (1, a signal)
    WRONG      exit 0 where it must be refused, refused for another reason than the one probed,
               a wrong result where it must succeed, a temporary or half-written file left
    OK         refused in one `error: ` line with exit code 2 (130/143 for Ctrl-C/SIGTERM), or,
               for a case meant to succeed, exit 0 and the right output

    python bench/hostile.py                      # every case (about half an hour on 2 cores)
    python bench/hostile.py --only resume -v     # the cases whose id or category holds 'resume'
    python bench/hostile.py --limit 5 -v         # the first five
    python bench/hostile.py --list               # the cases, not run

Everything is made at run time under a temporary folder (--keep keeps it): tiny checkpoints
(widths 16,16,32,32), a few rendered images, one tiny training run (made only when a resume case
runs) and one captcha-serve and one captcha-label (started only for their HTTP cases). Exit code
0 when every case is OK, 1 otherwise. One case at a time (--jobs 1): the machine has 2 cores."""
import argparse
import base64
import csv
import fnmatch
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMANDS = ("train", "predict", "generate", "serve", "label", "export")
ENTRY = {name: f"from captcha_lit.commands.cli import {name}; {name}()" for name in COMMANDS}
OUTCOMES = ("OK", "WRONG", "TRACEBACK", "REPLACED", "HANG", "CODE")
EXPECTED_CODES = {0, 2, 130, 143}
WRITES = (".csv", ".onnx", ".json", ".png", ".ckpt", ".tmp")  # what the commands write: a refused case writes none
MARKER = "MARKER_RAN"  # every payload touches <case folder>/MARKER_RAN

# a narrow network and a handful of images: a training case refuses (or trains one step) in seconds
TRAIN_BASE = ["trainer=cpu", "trainer.max_steps=1", "model.widths=[16,16,32,32]", "data.num_train=64",
              "data.num_val=32", "data.batch_size=32", "data.num_workers=0", "trainer.enable_progress_bar=false",
              "logger=csv", "int8=false", "test=false"]


# ------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    id: str
    cat: str
    cmd: str | None = None            # the entry point; None: `run` does the whole case
    args: list | Callable = ()        # strings with @D (case folder), @B (shared inputs), @RUN, @ONNX, @INT8
    expect: str = "refuse"            # refuse | ok | either | signal
    match: str | None = None          # regex the error line must match (refusals)
    setup: Callable | None = None     # setup(w, d): the hostile files, in the case folder d
    check: Callable | None = None     # check(w, d, result) -> None, or what is wrong (successes)
    timeout: float | None = None
    send: tuple | None = None         # (signal, trigger, exit code): trigger "banner", ("text", s) or ("glob", pattern)
    banner: str | None = None         # a server's line saying it listens
    on_banner: Callable | None = None  # on_banner(w, d, port) -> None or a complaint, while it serves
    run: Callable | None = None       # run(w, d) -> Result, for HTTP cases
    mutable: tuple = ()               # globs (relative to d) that may change


@dataclass
class Result:
    rc: int | None = None
    out: str = ""
    err: str = ""
    seconds: float = 0.0
    timed_out: bool = False
    started: bool = False             # a server started where it had to refuse
    complaint: str | None = None
    verdict: tuple | None = None      # (outcome, line) decided by an HTTP case


def refuse(id, cat, cmd, args, match=None, setup=None, **kw):
    return Case(id, cat, cmd, args, "refuse", match, setup, **kw)


def succeed(id, cat, cmd, args, check=None, setup=None, **kw):
    return Case(id, cat, cmd, args, "ok", None, setup, check, **kw)


def either(id, cat, cmd, args, check=None, setup=None, match=None, **kw):
    return Case(id, cat, cmd, args, "either", match, setup, check, **kw)


# ------------------------------------------------------------------------------------------ files
def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot(top: Path) -> dict:
    """Every entry below `top`, without following links or opening anything but regular files."""
    found = {}
    if not top.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            rel = str(p.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                found[rel] = ("file", sha256(p))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir",)
            else:
                found[rel] = ("special", stat.S_IFMT(st.st_mode))
    return found


def put(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def link(path: Path, target) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return path


def png_bytes(width=72, height=72, mode="RGB", colour=255) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def png_header(width, height) -> bytes:
    """A PNG whose header says width x height, in a few hundred bytes: a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4000)) + \
        chunk(b"IEND", b"")


def render(folder: Path, task_name: str, n: int, seed=0, prefix="", name=lambda i, label: f"{i:05d}.png"):
    """n rendered captchas of a preset task in folder; returns (relative name, label) rows."""
    from PIL import Image
    from captcha_lit.data.render import Renderer
    from captcha_lit.data.seeded import sample_rng
    from captcha_lit.data.tasks import preset
    task = preset(task_name)
    renderer = Renderer(task.width, task.height, task.length, task.alphabet)
    rows = []
    for i in range(n):
        img, label = renderer.render(sample_rng(seed, task_name, i))
        rel = prefix + name(i, label)
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / rel)
        rows.append((rel, label))
    return rows


def write_csv(path: Path, rows, header=("filename", "label")):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def csv_rows(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# ------------------------------------------------------------------------------------------ payloads
class RunsCode:
    """A pickle that runs `touch marker` when loaded."""
    def __init__(self, marker, how="system"):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "eval":
            return eval, (f"__import__('os').system('touch {self.marker}')",)
        if self.how == "exec":
            return exec, (f"import os; os.system('touch {self.marker}')",)
        if self.how == "popen":
            return subprocess.Popen, (["touch", self.marker],)
        return os.system, (f"touch {self.marker}",)


def marker(d: Path) -> Path:
    return d / MARKER


def touch_cmd(d: Path) -> str:
    return f"touch {marker(d)}"


# ------------------------------------------------------------------------------------------ the world
class World:
    """The shared inputs (made once, protected in every case), the lazily made training run,
    server and label page, and a reader to know what a prediction must say."""

    def __init__(self, root: Path, timeout: float):
        self.root, self.timeout = root, timeout
        self.base, self.pristine = root / "base", root / "pristine"
        self.cases = root / "cases"
        self.cases.mkdir(parents=True)
        self._readers, self._tiny = {}, {}
        self._server = self._label = None
        self._run = self._onnx = self._int8 = None
        self.protected = [(self.base, ())]  # (folder, globs that may change)
        self.build_base()

    # ---- shared inputs
    def tiny(self, task="task1"):
        """(hyperparameters, state dict) of a tiny untrained model of a preset task."""
        if task not in self._tiny:
            import torch
            from captcha_lit.data.tasks import preset
            from captcha_lit.model.module import CaptchaModule
            torch.manual_seed(0)
            module = CaptchaModule(preset(task).config(), widths=(16, 16, 32, 32))
            self._tiny[task] = (dict(module.hparams), module.state_dict())
        return self._tiny[task]

    def save_ckpt(self, path: Path, task="task1", hp=None, state=None, extra=None, raw=None):
        """A checkpoint: the tiny model's, with its hyperparameters/state changed by hp(dict)/state(dict)."""
        import copy
        import torch
        hparams, weights = self.tiny(task)
        hparams, weights = copy.deepcopy(hparams), {k: v.clone() for k, v in weights.items()}
        if hp:
            hparams = hp(hparams) or hparams
        if state:
            weights = state(weights) or weights
        payload = raw if raw is not None else {"hyper_parameters": hparams, "state_dict": weights, "epoch": 0,
                                               **(extra or {})}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, path)
        return path

    def build_base(self):
        b = self.base
        b.mkdir()
        self.save_ckpt(b / "m.ckpt")
        self.save_ckpt(b / "m2.ckpt", "task2")
        self.save_ckpt(b / "m3.ckpt", "task3")
        write_csv(b / "d" / "annotations.csv", render(b / "d", "task1", 6, prefix="task1/"))  # competition layout
        render(b / "flat", "task1", 4, seed=1, name=lambda i, label: f"{i}.png")  # a folder of images
        write_csv(b / "d3" / "annotations.csv", render(b / "d3", "task3", 12, prefix="task3/"))
        render(b / "outside", "task1", 1, seed=2, name=lambda i, label: "secret.png")
        put(b / "outside" / "secret.txt", "the password is hunter2\n")
        self.sync_pristine()

    def sync_pristine(self):
        if self.pristine.exists():
            shutil.rmtree(self.pristine)
        shutil.copytree(self.base, self.pristine, symlinks=True)

    def restore_base(self):
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.copytree(self.pristine, self.base, symlinks=True)

    def run_dir(self) -> Path:
        """One tiny real training run (the folder resume= continues), made the first time it is needed."""
        if self._run is None:
            run = self.base / "run"
            args = TRAIN_BASE + ["data.num_train=64", "scheduler=none", f"hydra.run.dir={run}"]
            result = subprocess.run([sys.executable, "-c", ENTRY["train"], *args], cwd=self.root, env=child_env(),
                                    capture_output=True, text=True, timeout=600, preexec_fn=default_sigint)
            if result.returncode != 0 or not (run / "checkpoints" / "last.ckpt").is_file():
                raise SystemExit(f"hostile.py: the tiny training run failed:\n{result.stderr[-3000:]}")
            self._run = run
            self.sync_pristine()
        return self._run

    def onnx_dir(self) -> Path:
        """m.ckpt exported to ONNX (m.onnx + m.onnx.json)."""
        if self._onnx is None:
            from captcha_lit.reading.export import export_onnx
            folder = self.base / "onnx"
            folder.mkdir()
            export_onnx(self.base / "m.ckpt", folder / "m.onnx")
            self._onnx = folder
            self.sync_pristine()
        return self._onnx

    def int8_dir(self) -> Path:
        """A copy of m.ckpt (m8.ckpt) with its real int8 copy, contract and fp32 original."""
        if self._int8 is None:
            from captcha_lit.reading.export import int8_from_folder
            folder = self.base / "q"
            folder.mkdir()
            shutil.copy(self.base / "m.ckpt", folder / "m8.ckpt")
            int8_from_folder(folder / "m8.ckpt", self.base / "d")
            self._int8 = folder
            self.sync_pristine()
        return self._int8

    def sub(self, text: str, d: Path) -> str:
        for key, value in (("@RUN", lambda: self.run_dir()), ("@ONNX", lambda: self.onnx_dir()),
                           ("@INT8", lambda: self.int8_dir()), ("@B", lambda: self.base), ("@D", lambda: d)):
            if key in text:
                text = text.replace(key, str(value()))
        return text

    # ---- what a prediction must say
    def reader(self, model: Path):
        key = str(model)
        if key not in self._readers:
            from captcha_lit import CaptchaReader
            self._readers[key] = (CaptchaReader.from_onnx(model) if key.endswith(".onnx") else
                                  CaptchaReader.from_checkpoint(model, device="cpu", precision="32"))
        return self._readers[key]

    def expected(self, model: Path, paths) -> list:
        return self.reader(model).read([Path(p) for p in paths])

    # ---- the shared server and label page (their HTTP cases)
    def server(self) -> dict:
        if self._server is None or self._server["proc"].poll() is not None:
            b = self.base
            self._server = start_server("serve", [f"ckpt=[{b / 'm3.ckpt'},{b / 'm.ckpt'}]", "port=0", "precision=32",
                                                  "device=cpu", "max_images=8", "body_timeout_s=1", "max_body_mb=1",
                                                  "max_pixels=1000000"], self.root, "serving")
            images = sorted((b / "d3" / "task3").glob("*.png"))
            self._server.update(images=images, expected=self.expected(b / "m3.ckpt", images))
        return self._server

    def label_page(self) -> dict:
        if self._label is None or self._label["proc"].poll() is not None:
            folder = self.root / "labelme"
            if not folder.exists():
                render(folder, "task1", 4, seed=3, name=lambda i, label: f"{i:05d}.png")
                render(folder, "task1", 1, seed=4, prefix="sub/")
                fifo(folder / "pipe.png")
                put(folder / "text.png", "not an image\n")
                put(folder / "secret.txt", "not for the page\n")
                self.protected.append((folder, ("annotations.csv", ".captcha-label.json")))
            self._label = start_server("label", [f"data_dir={folder}", "ckpt=null", "port=0"], self.root, "labelling")
            self._label["folder"] = folder
        return self._label

    def close(self):
        for s in (self._server, self._label):
            if s is not None and s["proc"].poll() is None:
                s["proc"].send_signal(signal.SIGTERM)
                try:
                    s["proc"].wait(20)
                except subprocess.TimeoutExpired:
                    kill_group(s["proc"])


def child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                                         else [])))
    env.pop("HYDRA_FULL_ERROR", None)
    return env


MEMORY_LIMIT = [16 << 30]  # bytes of address space a child may map (--memory-gb): a memory bomb fails, not the machine


def default_sigint():
    """In each child: SIGINT back to its default (a shell that starts this in the background hands it
    ignored, and Python keeps an inherited ignore), and its address space capped."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if MEMORY_LIMIT[0]:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT[0], MEMORY_LIMIT[0]))


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


class Pipes:
    """A process's stdout and stderr, collected by two threads as they arrive."""

    def __init__(self, proc):
        self.parts = {"out": [], "err": []}
        self.threads = [threading.Thread(target=self._read, args=(stream, self.parts[k]), daemon=True)
                        for k, stream in (("out", proc.stdout), ("err", proc.stderr))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _read(stream, parts):
        for chunk in iter(lambda: stream.read1(65536), b""):
            parts.append(chunk)

    def text(self, key) -> str:
        return b"".join(self.parts[key]).decode(errors="replace")

    def join(self, seconds=5):
        for t in self.threads:
            t.join(seconds)


def start_server(command, args, cwd, banner) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", ENTRY[command], *args], cwd=cwd, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=default_sigint)
    pipes = Pipes(proc)
    deadline = time.monotonic() + 180
    while banner not in pipes.text("out") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    found = re.search(r"http://[^\s]*:(\d+)", pipes.text("out"))
    if not found:
        kill_group(proc)
        raise SystemExit(f"hostile.py: captcha-{command} did not start:\n{pipes.text('err')[-3000:]}")
    return {"proc": proc, "pipes": pipes, "port": int(found[1])}


# ------------------------------------------------------------------------------------------ running a case
def trigger_met(trigger, pipes, d, banner_seen) -> bool:
    if trigger == "banner":
        return banner_seen
    kind, value = trigger
    if kind == "text":
        return value in pipes.text("out") + pipes.text("err")
    if kind == "glob":
        return any(d.glob(value))
    return False


def run_process(w: World, c: Case, d: Path, args: list) -> Result:
    timeout = c.timeout or w.timeout
    proc = subprocess.Popen([sys.executable, "-c", ENTRY[c.cmd], *args], cwd=d, env=child_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=default_sigint)
    pipes, result = Pipes(proc), Result()
    start, sent, banner_seen = time.monotonic(), False, False
    while proc.poll() is None:
        if time.monotonic() - start > timeout:
            result.timed_out = True
            kill_group(proc)
            break
        if c.banner and not banner_seen and c.banner in pipes.text("out"):
            banner_seen = True
            if c.expect == "refuse":  # it serves where it had to refuse
                result.started = True
                kill_group(proc)
                break
            if c.on_banner:
                port = re.search(r"http://[^\s]*:(\d+)", pipes.text("out"))
                try:
                    result.complaint = c.on_banner(w, d, int(port[1]) if port else None)
                except Exception as e:  # noqa: BLE001 - a failed probe is the case's finding
                    result.complaint = f"probe failed: {type(e).__name__}: {e}"
            if not c.send:
                proc.send_signal(signal.SIGTERM)
        if c.send and not sent and trigger_met(c.send[1], pipes, d, banner_seen):
            time.sleep(0.3)  # inside the work
            proc.send_signal(c.send[0])
            sent = True
        time.sleep(0.05)
    result.seconds = time.monotonic() - start
    result.rc = proc.returncode
    pipes.join()
    for _ in range(50):  # its worker processes end with it
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        kill_group(proc)
        if not result.timed_out:
            result.complaint = result.complaint or "worker processes still running 5 s after it exited"
    result.out, result.err = pipes.text("out"), pipes.text("err")
    if c.send and not sent and not result.timed_out:
        result.complaint = result.complaint or f"ended before it could be interrupted (exit {result.rc})"
    return result


def error_lines(c: Case, err: str) -> list:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    if c.cmd == "export":  # argparse's own refusal: `usage: ...` then `captcha-export: error: ...`
        lines += [line for line in err.splitlines() if line.startswith("captcha-export: error: ")]
    return lines


def classify(w: World, c: Case, d: Path, res: Result, replaced: list, left: list, marker_hit: bool):
    """(outcome, the line to show)."""
    tail = (res.err.strip().splitlines() or res.out.strip().splitlines() or [""])[-1][:200]
    if marker_hit:
        return "CODE", f"the payload ran: {MARKER} exists"
    if res.timed_out:
        return "HANG", f"still running after {c.timeout or w.timeout:g} s; killed"
    if replaced:
        return "REPLACED", "changed or gone: " + ", ".join(replaced[:4]) + (" ..." if len(replaced) > 4 else "")
    if res.verdict is not None:
        return res.verdict
    text = res.out + res.err
    if "Traceback" in text or res.rc not in EXPECTED_CODES:
        why = f"exit {res.rc}" if res.rc is None or res.rc >= 0 else f"killed by signal {-res.rc}"
        lines = [x for x in text.splitlines() if x.strip() and not x.startswith(" ")]
        exception = next((x for x in reversed(lines) if re.match(r"[A-Za-z_][\w.]*(: |\(|$)", x)
                          and not x.startswith(("full_key", "object_type", "Set the environment"))), None)
        first = next((x for x in res.err.splitlines() + res.out.splitlines() if x.strip()), "")
        line = exception or first
        return "TRACEBACK", f"{why}: {line[:200]}"
    if res.started:
        return "WRONG", "started serving instead of refusing"
    if left:
        return "WRONG", "left behind: " + ", ".join(left[:4])
    if res.complaint and c.expect != "either":
        return "WRONG", res.complaint
    lines = error_lines(c, res.err)
    if c.expect == "signal":
        sig, _, code = c.send
        if res.rc != code:
            return "WRONG", f"exit {res.rc}, not {code}: {tail}"
        if code != 0 and not tail.startswith("interrupted"):
            return "WRONG", f"its last line is not `interrupted (...)`: {tail}"
        complaint = c.check(w, d, res) if c.check else None
        return ("WRONG", complaint) if complaint else ("OK", tail)
    refused = res.rc == 2 and len(lines) == 1
    if c.expect in ("refuse", "either") and refused:
        if c.match and not re.search(c.match, lines[0]):
            return "WRONG", f"refused, but not for the reason probed ({c.match!r}): {lines[0][:200]}"
        return "OK", lines[0][:200]
    if res.rc == 2:
        return "WRONG", f"exit 2 with {len(lines)} `error:` lines: {tail}"
    if res.rc == 0 and c.expect in ("ok", "either"):
        complaint = res.complaint or (c.check(w, d, res) if c.check else None)
        return ("WRONG", complaint) if complaint else ("OK", "exit 0, right output")
    if res.rc == 0:
        return "WRONG", f"exit 0: not refused ({tail})"
    return "WRONG", f"exit {res.rc}: {tail}"


def run_case(w: World, c: Case) -> tuple[str, str, float]:
    d = w.cases / c.id
    d.mkdir(parents=True)
    try:
        if c.setup:
            c.setup(w, d)
        args = [w.sub(a, d) for a in (c.args(w, d) if callable(c.args) else c.args)]
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - a harness failure, shown as the case's line
        return "WRONG", f"harness could not set the case up: {type(e).__name__}: {e}", 0.0
    roots = [(d, c.mutable)] + w.protected
    before = {str(top): snapshot(top) for top, _ in roots}
    start = time.monotonic()
    res = c.run(w, d) if c.run else run_process(w, c, d, args)
    res.seconds = time.monotonic() - start
    replaced, left = [], []
    for top, mutable in roots:
        after = snapshot(top)
        old = before[str(top)]
        for rel, entry in old.items():
            if entry[0] == "dir" or any(fnmatch.fnmatch(rel, g) for g in mutable) or rel.endswith(".tmp"):
                continue
            if after.get(rel) != entry:
                replaced.append(str(top / rel))
        for rel in set(after) - set(old):
            name = Path(rel).name
            if name.endswith(".tmp") or (top != d and not any(fnmatch.fnmatch(rel, g) for g in mutable)):
                left.append(str(top / rel))
            elif top == d and c.expect in ("refuse", "signal") and name.endswith(WRITES) and ".hydra" not in rel:
                left.append(str(top / rel))
        if top == w.base and (replaced or set(after) - set(old)):
            w.restore_base()
    outcome, line = classify(w, c, d, res, replaced, left, marker(d).exists())
    line = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in line)  # one printable line
    return outcome, line, res.seconds


# ------------------------------------------------------------------------------------------ case helpers
def copy(src_rel: str, dst_rel: str | None = None):
    """setup: copy a shared input into the case folder."""
    def do(w, d):
        src, dst = w.base / src_rel, d / (dst_rel or src_rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree(src, dst, symlinks=True) if src.is_dir() else shutil.copy(src, dst))
    return do


def steps(*fns):
    def do(w, d):
        for fn in fns:
            fn(w, d)
    return do


def predictions(out="out.csv", data="d", model="@B/m.ckpt", names=None):
    """check: the CSV holds one row per image, each the reader's reading."""
    def check(w, d, res):
        path = d / out
        if not path.is_file():
            return f"no {out} written"
        rows = csv_rows(path)
        if not rows or rows[0] != ["filename", "label"]:
            return f"{out}: header {rows[:1]}"
        folder = Path(w.sub(data if data.startswith("@") else f"@D/{data}", d))
        got = {r[0]: r[1] for r in rows[1:]}
        if names is not None and sorted(got) != sorted(names):
            return f"{out}: rows {sorted(got)[:6]}, expected {sorted(names)[:6]}"
        expected = w.expected(Path(w.sub(model, d)), [folder / n for n in got])
        wrong = [(n, got[n], e) for n, e in zip(got, expected) if got[n] != e]
        return f"{out}: {len(wrong)} wrong readings, e.g. {wrong[0]}" if wrong else None
    return check


def no_file(*rels):
    def check(w, d, res):
        there = [r for r in rels if (d / r).exists() or (d / r).is_symlink()]
        return f"written: {', '.join(there)}" if there else None
    return check


def files_exist(*rels):
    def check(w, d, res):
        missing = [r for r in rels if not (d / r).is_file()]
        return f"missing: {', '.join(missing)}" if missing else None
    return check


# ------------------------------------------------------------------------------------------ settings
P_BASE = ["ckpt=@B/m.ckpt", "data_dir=@B/flat", "output=@D/out.csv", "precision=32", "num_workers=0"]
S_BASE = ["ckpt=@B/m.ckpt", "port=0", "precision=32", "device=cpu"]
L_BASE = ["data_dir=@D/imgs", "ckpt=null", "port=0"]
G_BASE = ["out=@D/g", "num.task1=2", "num.task2=0", "num.task3=0", "num_workers=0"]


def override(base: list, extra: list) -> list:
    """base with extra's keys replaced (Hydra refuses a key given twice)."""
    keys = {e.split("=", 1)[0].lstrip("+~") for e in extra}
    return [a for a in base if a.split("=", 1)[0].lstrip("+~") not in keys] + list(extra)


def train_args(*extra, run="@D/run"):
    return override(TRAIN_BASE + [f"hydra.run.dir={run}"], list(extra))


# (key, wrong type, out of range, context overrides): every setting of settings.SCHEMA
TRAIN_SETTINGS = [
    ("seed", "abc", "1.5", []), ("test", "maybe", "2", []), ("int8", "no", "0", []), ("final", "yes", "1", []),
    ("compile", "sure", "-1", []),
    ("data.batch_size", "abc", "0", []), ("data.num_train", "many", "-5", []), ("data.num_val", "[1]", "0", []),
    ("data.epoch_size", "lots", "0", ["FOLDER"]), ("data.epoch_pixels", "1e9x", "0", ["FOLDER"]),
    ("data.synthetic_ratio", "half", "-1", ["FOLDER"]), ("data.real_fraction", "half", "1.5", ["MIXED"]),
    ("data.val_fraction", "tenth", "1", ["FOLDER"]), ("data.test_fraction", "x", "1", ["FOLDER"]),
    ("data.fold", "first", "-1", ["FOLDER"]),
    ("data.num_workers", "two", "-1", []), ("data.materialize", "perhaps", "3", []),
    ("+data.fresh_train", "perhaps", "3", []),
    ("data.imagecaptcha_share", "half", "1.5", []), ("data.kaggle_share", "tenth", "-0.1", []),
    ("trainer.max_epochs", "forever", "0", []), ("trainer.max_steps", "x", "-2", []),
    ("trainer.log_every_n_steps", "often", "-1", []),
    ("optimizer.lr", "fast", "0", []), ("optimizer.weight_decay", "none", "-0.1", []),
    ("optimizer.momentum", "x", "1", ["optimizer=sgd"]),
    ("model.augment", "strong", "-1", []), ("model.label_smoothing", "x", "1", []), ("model.ema", "x", "1.5", []),
    ("model.blocks_per_stage", "two", "0", []), ("model.columns", "x", "-1", []),
    ("model.channels_last", "1x", "5", []), ("model.widths", "16", "[16,0,32,32]", []),
    ("model.strides", "two", "[0,2,2,2]", []),
]
PREDICT_SETTINGS = [("ckpt", "123", "[]"), ("data_dir", "5", "''"), ("output", "7", "''"),
                    ("allow_partial", "maybe", "2"), ("progress", "yes", "0"), ("fold_case", "on", "1"),
                    ("device", "5", "tpu"), ("precision", "[32]", "fp8"),
                    # CaptchaReader's own arguments
                    ("batch_size", "big", "0"), ("num_workers", "two", "-1"), ("tta", "x", "9"),
                    ("alphabet", "[1,2]", "xyz"), ("lengths", "four", "6-4")]
SERVE_SETTINGS = [("ckpt", "123", "[]"), ("port", "http", "70000"), ("host", "5", "''"), ("default", "5", "''"),
                  ("max_body_mb", "big", "0"), ("max_pixels", "x", "0"), ("max_images", "many", "0"),
                  ("timeout_s", "x", "0"), ("body_timeout_s", "x", "-1"), ("queue_size", "x", "0"),
                  ("max_batch", "x", "0"), ("device", "5", "tpu"), ("precision", "[32]", "fp8"),
                  ("fold_case", "on", "1"), ("alphabet", "[1,2]", "xyz"), ("lengths", "four", "6-4")]
LABEL_SETTINGS = [("data_dir", "5", "''"), ("ckpt", "123", "[]"), ("order", "3", "random"), ("port", "http", "70000"),
                  ("host", "5", "''"), ("device", "5", "tpu"), ("precision", "[32]", "fp8"), ("fold_case", "on", "1"),
                  ("lengths", "four", "6-4")]
GENERATE_SETTINGS = [("out", "5", "''"), ("seed", "abc", "1.5"), ("num_workers", "two", "-1")]


def settings_cases() -> list:
    cases = []
    context = {"FOLDER": ["data=folder", "data.root=@B/d", "task=task1"],
               "MIXED": ["data=mixed", "data.root=@B/d", "task=task1"]}
    for key, wrong, out, ctx in TRAIN_SETTINGS:
        extra = [x for c in ctx for x in context.get(c, [c])]
        name = key.lstrip("+")
        for kind, value in (("type", wrong), ("range", out)):
            cases.append(refuse(f"settings-train-{name.replace('.', '-')}-{kind}", "settings", "train",
                                train_args(*extra, f"{key}={value}"), match=re.escape(name) + "="))
    cases += [
        refuse("settings-train-lr-nan", "settings", "train", train_args("optimizer.lr=nan"), "optimizer.lr="),
        refuse("settings-train-lr-inf", "settings", "train", train_args("optimizer.lr=inf"), "optimizer.lr="),
        refuse("settings-train-seed-null", "settings", "train", train_args("seed=null"), "seed="),
        refuse("settings-train-batch-bool", "settings", "train", train_args("data.batch_size=true"), "data.batch_size="),
        refuse("settings-train-widths-huge", "settings", "train", train_args("model.widths=[1073741824,16,32,32]"),
               "widths|memory|allocate"),
        refuse("settings-train-task-length-0", "settings", "train", train_args("task.length=0"), "task.length"),
        refuse("settings-train-task-width-huge", "settings", "train", train_args("task.width=100000"), "task.width"),
        refuse("settings-train-task-name-traversal", "settings", "train", train_args("task.name=../../escape"),
               "task.name"),
    ]
    for key, wrong, out in PREDICT_SETTINGS:
        for kind, value in (("type", wrong), ("range", out)):
            cases.append(refuse(f"settings-predict-{key.replace('_', '-')}-{kind}", "settings", "predict",
                                override(P_BASE, [f"{key}={value}"]), re.escape(key) + "="))
    for key, wrong, out in SERVE_SETTINGS:
        for kind, value in (("type", wrong), ("range", out)):
            cases.append(refuse(f"settings-serve-{key.replace('_', '-')}-{kind}", "settings", "serve",
                                override(S_BASE, [f"{key}={value}"]), re.escape(key) + "=", banner="serving"))
    for key, wrong, out in LABEL_SETTINGS:
        for kind, value in (("type", wrong), ("range", out)):
            cases.append(refuse(f"settings-label-{key.replace('_', '-')}-{kind}", "settings", "label",
                                override(L_BASE, [f"{key}={value}"]), re.escape(key) + "=", setup=copy("flat", "imgs"),
                                banner="labelling"))
    for key, wrong, out in GENERATE_SETTINGS:
        for kind, value in (("type", wrong), ("range", out)):
            cases.append(refuse(f"settings-generate-{key.replace('_', '-')}-{kind}", "settings", "generate",
                                override(G_BASE, [f"{key}={value}"]), re.escape(key) + "=",
                                check=no_file("g")))
    # a careless user's command line: Hydra's own mistakes
    cases += [
        refuse("hydra-predict-typo-key", "hydra", "predict", P_BASE + ["batchsize=8"], "batchsize"),
        refuse("hydra-predict-unclosed-list", "hydra", "predict", override(P_BASE, ["ckpt=[@B/m.ckpt"]), "ckpt"),
        refuse("hydra-train-unknown-option", "hydra", "train", train_args("optimizer=adamm"), "adamm"),
        refuse("hydra-train-typo-key", "hydra", "train", train_args("data.batchsize=8"), "batchsize"),
        refuse("hydra-serve-typo-key", "hydra", "serve", S_BASE + ["prot=0"], "prot", banner="serving"),
        refuse("hydra-generate-no-out", "hydra", "generate", ["num.task1=1"], "out"),
    ]
    return cases


# ------------------------------------------------------------------------------------------ files and CSVs
def plain(*extra_setup):
    """setup: a copy of the folder of images, then the hostile files."""
    return steps(copy("flat", "p"), *extra_setup)


def labelled(*extra_setup):
    return steps(copy("d"), *extra_setup)


def at(rel, data):
    return lambda w, d: put(d / rel, data(w, d) if callable(data) else data)


def truncated_png(w, d):
    data = (w.base / "flat" / "0.png").read_bytes()
    return data[: len(data) // 2]


def csv_text(text, encoding="utf-8"):
    return lambda w, d: put(d / "d" / "annotations.csv", text.encode(encoding) if isinstance(text, str) else text)


def annotations(rows, header=("filename", "label")):
    """setup: d/annotations.csv with the task1 images' rows plus `rows`."""
    def do(w, d):
        good = csv_rows(w.base / "d" / "annotations.csv")[1:]
        write_csv(d / "d" / "annotations.csv", good + [list(r) for r in rows], header)
    return do


PREDICT_PLAIN = ["ckpt=@B/m.ckpt", "data_dir=@D/p", "output=@D/out.csv", "precision=32", "progress=false"]
PREDICT_LABELLED = ["ckpt=@B/m.ckpt", "data_dir=@D/d", "output=@D/out.csv", "precision=32", "progress=false"]


def files_cases() -> list:
    P, L = PREDICT_PLAIN, PREDICT_LABELLED
    flat = [f"{i}.png" for i in range(4)]
    cases = [
        refuse("files-png-truncated", "files", "predict", P, r"bad\.png: not a readable image",
               plain(at("p/bad.png", truncated_png))),
        refuse("files-png-text", "files", "predict", P, r"bad\.png: not a readable image",
               plain(at("p/bad.png", "this is text, not a PNG\n"))),
        refuse("files-png-empty", "files", "predict", P, r"bad\.png", plain(at("p/bad.png", b""))),
        refuse("files-png-fifo", "files", "predict", P, r"pipe\.png: a named pipe", plain(lambda w, d: fifo(d / "p/pipe.png"))),
        refuse("files-png-fifo-workers", "files", "predict", override(P, ["num_workers=2"]), r"pipe\.png",
               plain(lambda w, d: [put(d / f"p/{i}x.png", (w.base / "flat/0.png").read_bytes()) for i in range(80)],
                     lambda w, d: fifo(d / "p/zz_pipe.png"))),
        refuse("files-png-directory", "files", "predict", P, r"x\.png", plain(lambda w, d: (d / "p/x.png").mkdir())),
        refuse("files-png-symlink-loop", "files", "predict", P, r"loop",
               plain(lambda w, d: link(d / "p/loop_a.png", "loop_b.png"), lambda w, d: link(d / "p/loop_b.png", "loop_a.png"))),
        refuse("files-png-dangling-symlink", "files", "predict", P, r"gone\.png",
               plain(lambda w, d: link(d / "p/gone.png", d / "nowhere.png"))),
        refuse("files-png-symlink-to-text", "files", "predict", P, r"leak\.png: not a readable image",
               plain(lambda w, d: link(d / "p/leak.png", w.base / "outside/secret.txt"))),
        refuse("files-png-symlink-to-dev-zero", "files", "predict", P, r"zero\.png",
               plain(lambda w, d: link(d / "p/zero.png", "/dev/zero"))),
        refuse("files-png-decompression-bomb", "files", "predict", P, r"bomb\.png",
               plain(at("p/bomb.png", png_header(20000, 20000)))),
        refuse("files-png-zero-width", "files", "predict", P, r"zero\.png", plain(at("p/zero.png", png_header(0, 72)))),
        refuse("files-name-not-utf8", "files", "predict", P, r"UTF-8",
               plain(lambda w, d: put(Path(os.fsdecode(bytes(d / "p") + b"/\xff\xfe.png")), png_bytes()))),
        succeed("files-symlink-to-image-outside", "files", "predict", P,
                predictions(data="p", names=flat + ["outside.png"]),
                plain(lambda w, d: link(d / "p/outside.png", w.base / "outside/secret.png"))),
        succeed("files-png-named-jpg", "files", "predict", P, predictions(data="p", names=flat + ["png.jpg"]),
                plain(lambda w, d: shutil.copy(w.base / "flat/0.png", d / "p/png.jpg"))),
        succeed("files-odd-modes-and-sizes", "files", "predict", P,
                predictions(data="p", names=flat + ["tiny.png", "grey16.png", "palette.gif", "rgba.png"]),
                plain(at("p/tiny.png", lambda w, d: png_bytes(1, 1)), at("p/grey16.png", lambda w, d: png_bytes(40, 30, "I;16", 30000)),
                      at("p/rgba.png", lambda w, d: png_bytes(300, 20, "RGBA", (0, 0, 0, 0))),
                      lambda w, d: __import__("PIL.Image").Image.open(w.base / "flat/1.png").convert("P").save(d / "p/palette.gif"))),
        succeed("files-name-comma-quote-newline", "files", "predict", P,
                predictions(data="p", names=flat + ['a,"b.png', "new\nline.png"]),
                plain(lambda w, d: shutil.copy(w.base / "flat/0.png", d / 'p/a,"b.png'),
                      lambda w, d: shutil.copy(w.base / "flat/1.png", d / "p/new\nline.png"))),
        refuse("files-data-dir-empty", "files", "predict", override(P, ["data_dir=@D/empty"]), r"no sample_submission",
               lambda w, d: (d / "empty").mkdir()),
        refuse("files-data-dir-is-file", "files", "predict", override(P, ["data_dir=@B/m.ckpt"]), r"no such folder"),
        refuse("files-data-dir-missing", "files", "predict", override(P, ["data_dir=@D/nope"]), r"no such folder"),
        refuse("files-data-dir-fifo", "files", "predict", override(P, ["data_dir=@D/pipe"]), r"pipe",
               lambda w, d: fifo(d / "pipe")),
        refuse("files-data-dir-symlink-loop", "files", "predict", override(P, ["data_dir=@D/loop"]), r"loop",
               lambda w, d: link(d / "loop", "loop")),
        refuse("files-only-non-images", "files", "predict", override(P, ["data_dir=@D/txt"]), r"txt",
               lambda w, d: [put(d / "txt/a.txt", "a"), put(d / "txt/b.csv.bak", "b")]),
        # ---- CSVs (a labelled folder: annotations.csv)
        refuse("csv-dotdot-name", "csv", "predict", L, r"points outside", labelled(annotations([("../secret.png", "1")]))),
        refuse("csv-dotdot-inside-name", "csv", "predict", L, r"points outside",
               labelled(annotations([("task1/../../x.png", "1")]))),
        refuse("csv-absolute-name", "csv", "predict", L, r"points outside",
               labelled(lambda w, d: annotations([(str(w.base / "outside/secret.png"), "1")])(w, d))),
        succeed("csv-byte-order-mark", "csv", "predict", L,
                predictions(data="d", names=[f"task1/{i:05d}.png" for i in range(6)]),
                labelled(lambda w, d: put(d / "d/annotations.csv", b"\xef\xbb\xbf" + (w.base / "d/annotations.csv").read_bytes()))),
        succeed("csv-header-with-spaces", "csv", "predict", L, predictions(data="d"),
                labelled(lambda w, d: put(d / "d/annotations.csv", (w.base / "d/annotations.csv").read_text()
                                          .replace("filename,label", " filename , label ")))),
        succeed("csv-old-mac-line-ends", "csv", "predict", L, predictions(data="d"),
                labelled(lambda w, d: put(d / "d/annotations.csv", (w.base / "d/annotations.csv").read_text()
                                          .replace("\r\n", "\r").replace("\n", "\r")))),
        refuse("csv-wrong-header", "csv", "predict", L, r"header", labelled(annotations([], header=("file", "text")))),
        refuse("csv-no-header", "csv", "predict", L, r"header", labelled(annotations([], header=None))),
        refuse("csv-empty", "csv", "predict", L, r"empty", labelled(csv_text(""))),
        refuse("csv-header-only", "csv", "predict", L, r"no rows", labelled(csv_text("filename,label\n"))),
        refuse("csv-missing-label-field", "csv", "predict", L, r"line 8: expected 2 fields",
               labelled(lambda w, d: put(d / "d/annotations.csv", (w.base / "d/annotations.csv").read_text() + "task1/00000.png\n"))),
        refuse("csv-three-fields", "csv", "predict", L, r"expected 2 fields",
               labelled(annotations([("task1/00000.png", "1", "extra")]))),
        refuse("csv-no-filename", "csv", "predict", L, r"no filename", labelled(annotations([("", "1")]))),
        refuse("csv-not-utf8", "csv", "predict", L, r"UTF-8",
               labelled(csv_text("filename,label\ntask1/00000.png,\xe9\n", "latin-1"))),
        refuse("csv-utf16", "csv", "predict", L, r"UTF-8|header",
               labelled(lambda w, d: put(d / "d/annotations.csv", (w.base / "d/annotations.csv").read_text().encode("utf-16")))),
        either("csv-nul-byte", "csv", "predict", L, predictions(data="d"),
               labelled(csv_text("filename,label\ntask1/00000.png,1\x00\n")), match=r"annotations\.csv"),
        refuse("csv-huge-field", "csv", "predict", L, r"annotations\.csv",
               labelled(annotations([("task1/00000.png", "9" * 200_000)]))),
        succeed("csv-long-label", "csv", "predict", L, predictions(data="d"),
                labelled(lambda w, d: put(d / "d/annotations.csv", (w.base / "d/annotations.csv").read_text()
                                          .replace("task1/00000.png,", "task1/00000.png,7" + "x" * 20_000, 1)))),
        succeed("csv-labels-with-commas-and-quotes", "csv", "predict", L, predictions(data="d"),
                labelled(lambda w, d: write_csv(d / "d/annotations.csv",
                                                [(f"task1/{i:05d}.png", lab) for i, lab in
                                                 enumerate(['1,2', '"3"', "4'", ' 5 ', '6\n7', ''])]))),
        either("csv-duplicate-rows-other-labels", "csv", "predict", L, predictions(data="d"),
               labelled(annotations([("task1/00000.png", "0"), ("task1/00000.png", "1")])), match=r"00000\.png"),
        refuse("csv-missing-image", "csv", "predict", L, r"gone\.png", labelled(annotations([("task1/gone.png", "1")]))),
        refuse("csv-row-names-fifo", "csv", "predict", L, r"pipe\.png",
               labelled(annotations([("task1/pipe.png", "1")]), lambda w, d: fifo(d / "d/task1/pipe.png"))),
        refuse("csv-row-names-symlink-loop", "csv", "predict", L, r"loop\.png",
               labelled(annotations([("task1/loop.png", "1")]), lambda w, d: link(d / "d/task1/loop.png", "loop.png"))),
        refuse("csv-row-names-the-csv", "csv", "predict", L, r"annotations\.csv",
               labelled(annotations([("task1/../annotations.csv", "1")]))),
        refuse("csv-row-names-a-folder", "csv", "predict", L, r"task1/sub",
               labelled(annotations([("task1/sub", "1")]), lambda w, d: (d / "d/task1/sub").mkdir())),
        either("csv-is-fifo", "csv", "predict", L, predictions(data="d", names=[f"task1/{i:05d}.png" for i in range(6)]),
               labelled(lambda w, d: (d / "d/annotations.csv").unlink(), lambda w, d: fifo(d / "d/annotations.csv")),
               match=r"annotations\.csv"),
        either("csv-is-folder", "csv", "predict", L, predictions(data="d"),
               labelled(lambda w, d: (d / "d/annotations.csv").unlink(), lambda w, d: (d / "d/annotations.csv").mkdir()),
               match=r"annotations\.csv"),
        refuse("csv-sample-submission-bad-header", "csv", "predict", L, r"sample_submission\.csv",
               labelled(lambda w, d: put(d / "d/sample_submission.csv", "id;label\n1;2\n"))),
    ]
    # training on a broken labelled folder
    T = lambda root="@D/d", *extra: train_args("data=folder", f"data.root={root}", "task=task1", *extra)  # noqa: E731
    cases += [
        refuse("train-data-truncated-png", "train-data", "train", T(), r"00002\.png: not a readable image",
               labelled(lambda w, d: put(d / "d/task1/00002.png", (w.base / "d/task1/00002.png").read_bytes()[:300]))),
        refuse("train-data-fifo-image", "train-data", "train", T(), r"pipe\.png: a named pipe",
               labelled(annotations([("task1/pipe.png", "3")]), lambda w, d: fifo(d / "d/task1/pipe.png"))),
        refuse("train-data-duplicate-other-label", "train-data", "train", T(), r"labelled both",
               labelled(lambda w, d: annotations([("task1/00000.png", "1" if csv_rows(w.base / "d/annotations.csv")[1][1] != "1" else "2")])(w, d))),
        refuse("train-data-missing-label", "train-data", "train", T("@D/a", "task=task1"), r"has no label",
               lambda w, d: (render(d / "a", "task1", 5, name=lambda i, lab: f"img{i}.png"),
                write_csv(d / "a/annotations.csv", [("img0.png", "1"), ("img1.png", "2"), ("img2.png", "3"),
                                                    ("img3.png", "4"), ("img4.png", "")]))),
        refuse("train-data-label-does-not-fit", "train-data", "train", T("@D/a"), r"does not fit",
               lambda w, d: (render(d / "a", "task1", 4, name=lambda i, lab: f"img{i}.png"),
                             write_csv(d / "a/annotations.csv", [("img0.png", "1"), ("img1.png", "2"), ("img2.png", "abc"),
                                                                 ("img3.png", "4")]))),
        refuse("train-data-dotdot-row", "train-data", "train", T("@D/a"), r"points outside",
               lambda w, d: (render(d / "a", "task1", 4, name=lambda i, lab: f"img{i}.png"),
                             write_csv(d / "a/annotations.csv", [("img0.png", "1"), ("../../outside.png", "2")]))),
        refuse("train-data-not-utf8-csv", "train-data", "train", T(), r"UTF-8",
               labelled(csv_text("filename,label\ntask1/00000.png,\xe9\n", "latin-1"))),
        refuse("train-data-label-named-empty", "train-data", "train", T("@D/n"), r"gives no label",
               lambda w, d: (render(d / "n", "task1", 4, name=lambda i, lab: f"{lab}_{i}.png"),
                             put(d / "n/_5.png", (w.base / "flat/0.png").read_bytes()))),
        refuse("train-data-root-is-file", "train-data", "train", T("@B/m.ckpt"), r"m\.ckpt"),
        refuse("train-data-other-task-only", "train-data", "train", T("@B/d3"), r"no usable rows of task1"),
        refuse("train-data-auto-one-image", "train-data", "train", train_args("data=folder", "data.root=@D/one",
                                                                              "task=auto", "experiment=auto"),
               r"leave none|too few|one|1 ", lambda w, d: render(d / "one", "task1", 1, name=lambda i, lab: f"{lab}.png")),
        either("train-data-symlink-loop-image", "train-data", "train", T("@D/n"), None,  # skipped, or refused
               lambda w, d: (render(d / "n", "task1", 4, name=lambda i, lab: f"{lab}_{i}.png"),
                             link(d / "n/7_loop.png", "7_loop.png")), match=r"loop"),
    ]
    return cases


# ------------------------------------------------------------------------------------------ checkpoints
def ckpt_at(rel="m.ckpt", **kw):
    return lambda w, d: w.save_ckpt(d / rel, **kw)


def evil(rel, how="zip"):
    """setup: a checkpoint whose unpickling runs `touch MARKER`."""
    def do(w, d):
        import torch
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"x": RunsCode(marker(d), how)}
        if how == "pickle2":
            path.write_bytes(pickle.dumps({"x": RunsCode(marker(d))}, protocol=2))
        elif how == "pickle5":
            path.write_bytes(pickle.dumps({"x": RunsCode(marker(d))}, protocol=5))
        else:
            hp, state = w.tiny()
            torch.save({"hyper_parameters": dict(hp), "state_dict": state, **payload}, path,
                       _use_new_zipfile_serialization=how != "legacy")
    return do


def hp_set(**values):
    def change(hp):
        hp.update(values)
    return change


def hp_drop(*keys):
    def change(hp):
        for k in keys:
            hp.pop(k, None)
    return change


def nan_weights(value):
    def change(state):
        state["net.heads.weight"][0, 0] = value
    return change


PC = ["ckpt=@D/m.ckpt", "data_dir=@B/flat", "output=@D/out.csv", "precision=32", "progress=false", "num_workers=0"]


def onnx_pair(contract=None, model=None):
    """setup: m.onnx (a copy of the export, or `model` bytes) and its contract (edited by `contract`)."""
    def do(w, d):
        src = w.onnx_dir()
        if model is None:
            shutil.copy(src / "m.onnx", d / "m.onnx")
        else:
            put(d / "m.onnx", model(w, d) if callable(model) else model)
        text = (src / "m.onnx.json").read_text()
        if contract is not None:
            data = json.loads(text)
            text = contract(data, w, d)
            text = text if isinstance(text, str) else json.dumps(data)
        put(d / "m.onnx.json", text)
    return do


def custom_op_model(w, d) -> bytes:
    from onnx import TensorProto, helper
    node = helper.make_node("PyOp", ["images"], ["logits"], domain="ai.onnx.contrib")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["b", 3, 72, 72])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 1, 10])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.contrib", 1)]).SerializeToString()


def external_data_model(location):
    def make(w, d) -> bytes:
        from onnx import TensorProto, helper
        tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[1, 1, 10])
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "40")):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        node = helper.make_node("Identity", ["W"], ["logits"])
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["b", 3, 72, 72])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, 10])], [tensor])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    return make


def int8_copy(contract=None, files=None):
    """setup: m8.ckpt with its real int8 copy; contract(data) edits the copy's contract, files(w, d) the rest."""
    def do(w, d):
        src = w.int8_dir()
        for p in src.iterdir():
            shutil.copy(p, d / p.name)
        if contract is not None:
            path = d / "m8.int8.onnx.json"
            data = json.loads(path.read_text())
            contract(data)
            path.write_text(json.dumps(data))
        if files is not None:
            files(w, d)
    return do


def run_folder(ckpt_setup=None, extra=None):
    """setup: a training run's folder layout, run/checkpoints/..."""
    def do(w, d):
        (d / "run" / "checkpoints").mkdir(parents=True)
        if ckpt_setup:
            ckpt_setup(w, d)
        if extra:
            extra(w, d)
    return do


HUBCONF = "import os\nos.system('touch {marker}')\ndef model():\n    os.system('touch {marker}')\n"


def checkpoint_cases() -> list:
    flat = [f"{i}.png" for i in range(4)]
    R = lambda match, setup, args=PC: refuse(None, "checkpoints", "predict", args, match, setup)  # noqa: E731
    items = {
        "random-bytes": R(r"m\.ckpt: not a readable checkpoint", at("m.ckpt", os.urandom(5000))),
        "text": R(r"m\.ckpt: not a readable checkpoint", at("m.ckpt", "this is a text file, not a checkpoint\n")),
        "empty": R(r"m\.ckpt", at("m.ckpt", b"")),
        "truncated": R(r"m\.ckpt: not a readable checkpoint",
                       lambda w, d: put(d / "m.ckpt", (w.base / "m.ckpt").read_bytes()[:3000])),
        "directory": R(r"m\.ckpt", lambda w, d: (d / "m.ckpt").mkdir()),
        "fifo": R(r"m\.ckpt", lambda w, d: fifo(d / "m.ckpt")),
        "symlink-to-fifo": R(r"m\.ckpt", lambda w, d: (fifo(d / "pipe"), link(d / "m.ckpt", "pipe"))),
        "symlink-loop": R(r"m\.ckpt", lambda w, d: link(d / "m.ckpt", "m.ckpt")),
        "missing": R(r"m\.ckpt: no such file", None),
        "json": R(r"m\.ckpt", at("m.ckpt", json.dumps({"hyper_parameters": {"task": "task1"}, "state_dict": {}}))),
        "zip-not-torch": R(r"m\.ckpt", lambda w, d: shutil.make_archive(str(d / "z"), "zip", w.base / "flat")
                           and os.rename(d / "z.zip", d / "m.ckpt")),
        "pickle-os-system": R(r"refused: it would import", evil("m.ckpt")),
        "pickle-legacy-format": R(r"refused: it would import", evil("m.ckpt", "legacy")),
        "pickle-protocol-2": R(r"m\.ckpt: (refused|not a readable)", evil("m.ckpt", "pickle2")),
        "pickle-protocol-5": R(r"m\.ckpt: (refused|not a readable)", evil("m.ckpt", "pickle5")),
        "pickle-eval": R(r"refused: it would import", evil("m.ckpt", "eval")),
        "pickle-exec": R(r"refused: it would import", evil("m.ckpt", "exec")),
        "pickle-subprocess": R(r"refused: it would import", evil("m.ckpt", "popen")),
        "global-pathlib": R(r"refused: it would import .*Path", ckpt_at(hp=hp_set(root=Path("/tmp")))),
        "global-dictconfig": R(r"refused: it would import",
                               ckpt_at(hp=hp_set(cfg=__import__("omegaconf").OmegaConf.create({"a": 1})))),
        "nan-weights": R(r"NaN or infinite", ckpt_at(state=nan_weights(float("nan")))),
        "inf-weights": R(r"NaN or infinite", ckpt_at(state=nan_weights(float("inf")))),
        "no-task": R(r"not a captcha-lit checkpoint", ckpt_at(hp=hp_drop("task"))),
        "hparams-list": R(r"not a captcha-lit checkpoint", ckpt_at(raw={"hyper_parameters": [1, 2], "state_dict": {}})),
        "no-state-dict": R(r"not a captcha-lit checkpoint", ckpt_at(raw={"hyper_parameters": {"task": "task1"}})),
        "state-dict-list": R(r"m\.ckpt", lambda w, d: w.save_ckpt(d / "m.ckpt", raw={"hyper_parameters": dict(w.tiny()[0]),
                                                                                       "state_dict": [1, 2]})),
        "tensor-only": R(r"not a captcha-lit checkpoint", lambda w, d: __import__("torch").save(__import__("torch").zeros(3), d / "m.ckpt")),
        "no-widths": R(r"do not fit|widths", ckpt_at(hp=hp_drop("widths"))),
        "widths-empty": R(r"do not fit|widths", ckpt_at(hp=hp_set(widths=[]))),
        "widths-zero": R(r"do not fit|widths", ckpt_at(hp=hp_set(widths=[0, 16, 32, 32]))),
        "widths-string": R(r"do not fit|widths", ckpt_at(hp=hp_set(widths="16,16,32,32"))),
        "widths-huge": R(r"do not fit|widths|memory", ckpt_at(hp=hp_set(widths=[1 << 30, 16, 32, 32]))),
        "width-zero": R(r"width", ckpt_at(hp=hp_set(width=0))),
        "width-string": R(r"width", ckpt_at(hp=hp_set(width="72"))),
        "length-zero": R(r"length", ckpt_at(hp=hp_set(length=0))),
        "length-bool": R(r"length", ckpt_at(hp=hp_set(length=True))),
        "alphabet-empty": R(r"alphabet", ckpt_at(hp=hp_set(alphabet=""))),
        "alphabet-repeats": R(r"alphabet", ckpt_at(hp=hp_set(alphabet="00123456789"))),
        "alphabet-vs-weights": R(r"do not fit", ckpt_at(hp=hp_set(alphabet="0123456789abcdefghijklmnopqrstuvwxyz"))),
        "task-name-traversal": R(r"task\.name", ckpt_at(hp=hp_set(task="../../escape"))),
        "task-not-text": R(r"task", ckpt_at(hp=hp_set(task={"_target_": "os.system", "_args_": ["touch x"]}))),
        "head-unknown": R(r"head", ckpt_at(hp=hp_set(head="lstm"))),
        "std-zero": R(r"std", ckpt_at(hp=hp_set(std=[0.5, 0.0, 0.5]))),
        "mean-short": R(r"mean", ckpt_at(hp=hp_set(mean=[0.5]))),
        "lowercase-text": R(r"lowercase", ckpt_at(hp=hp_set(lowercase="yes"))),
        "shape-mismatch": R(r"do not fit", ckpt_at(hp=hp_set(widths=[32, 32, 64, 64]))),
        "pretrained-traversal": R(r"pretrained", None, override(PC, ["ckpt=pretrained:../../../m"])),
        "pretrained-unknown": R(r"pretrained", None, override(PC, ["ckpt=pretrained:task9"])),
        "run-folder-empty": R(r"no run with a checkpoint", lambda w, d: (d / "run").mkdir(), override(PC, ["ckpt=@D/run"])),
        "run-folder-fifo-best": R(r"best-epoch000-exact0\.5000\.ckpt|named pipe",
                                  run_folder(lambda w, d: fifo(d / "run/checkpoints/best-epoch000-exact0.5000.ckpt")),
                                  override(PC, ["ckpt=@D/run"])),
        "run-folder-last-loop": R(r"run", run_folder(lambda w, d: link(d / "run/checkpoints/last.ckpt", "last.ckpt")),
                                  override(PC, ["ckpt=@D/run"])),
        "multirun-two-of-one-task": R(r"both trained",
                                      lambda w, d: [shutil.copy(w.base / "m.ckpt", (d / f"multi/{i}/checkpoints").mkdir(parents=True)
                                                                or d / f"multi/{i}/checkpoints/last.ckpt") for i in (0, 1)],
                                      override(PC, ["ckpt=@D/multi"])),
        "two-tasks-on-a-flat-folder": R(r"no model for", copy("m.ckpt"), override(PC, ["ckpt=[@D/m.ckpt,@B/m3.ckpt]"])),
        "list-with-empty-name": R(r"ckpt=", copy("m.ckpt"), override(PC, ["ckpt=[@D/m.ckpt,'']"])),
    }
    cases = [Case(**{**c.__dict__, "id": f"ckpt-{name}"}) for name, c in items.items()]
    cases += [
        succeed("ckpt-hparams-naming-os-system", "checkpoints", "predict", PC, predictions(data="@B/flat", model="@D/m.ckpt",
                                                                                          names=flat),
                ckpt_at(hp=hp_set(_target_="os.system", _args_=["touch MARKER_RAN"]))),
        succeed("ckpt-run-folder-with-hubconf", "checkpoints", "predict", override(PC, ["ckpt=@D/run"]),
                predictions(data="@B/flat", names=flat),
                run_folder(lambda w, d: shutil.copy(w.base / "m.ckpt", d / "run/checkpoints/last.ckpt"),
                           lambda w, d: [put(d / "run" / n, HUBCONF.format(marker=marker(d)))
                                         for n in ("hubconf.py", "__init__.py", "sitecustomize.py", "conftest.py")])),
        succeed("ckpt-ensemble-of-one-twice", "checkpoints", "predict", override(PC, ["ckpt=[@B/m.ckpt,@B/m.ckpt]"]),
                predictions(data="@B/flat", names=flat)),
        either("ckpt-numpy-array-inside", "checkpoints", "predict", PC, predictions(data="@B/flat", model="@D/m.ckpt"),
               ckpt_at(extra={"metrics": __import__("numpy").arange(3)}), match=r"m\.ckpt"),
        # ---- through the other entry points
        refuse("ckpt-pickle-via-export", "checkpoints", "export", ["@D/m.ckpt", "@D/out.onnx"], r"refused", evil("m.ckpt")),
        refuse("ckpt-pickle-via-serve", "checkpoints", "serve", override(S_BASE, ["ckpt=@D/m.ckpt"]), r"refused",
               evil("m.ckpt"), banner="serving"),
        refuse("ckpt-pickle-via-label", "checkpoints", "label", override(L_BASE, ["ckpt=@D/m.ckpt"]), r"refused",
               steps(copy("flat", "imgs"), evil("m.ckpt")), banner="labelling"),
        refuse("ckpt-pickle-via-init-from", "checkpoints", "train", train_args("init_from=@D/m.ckpt"), r"refused",
               evil("m.ckpt")),
        refuse("ckpt-pickle-via-ckpt-path", "checkpoints", "train", train_args("ckpt_path=@D/m.ckpt"), r"refused",
               evil("m.ckpt")),
        refuse("ckpt-init-from-text", "checkpoints", "train", train_args("init_from=@D/m.ckpt"), r"m\.ckpt",
               at("m.ckpt", "not a checkpoint\n")),
        refuse("ckpt-init-from-missing", "checkpoints", "train", train_args("init_from=@D/nope.ckpt"), r"no such file"),
        refuse("ckpt-init-from-fifo", "checkpoints", "train", train_args("init_from=@D/m.ckpt"), r"m\.ckpt",
               lambda w, d: fifo(d / "m.ckpt")),
        refuse("ckpt-init-from-nan", "checkpoints", "train", train_args("init_from=@D/m.ckpt"), r"NaN",
               ckpt_at(state=nan_weights(float("nan")))),
        refuse("ckpt-init-from-onnx", "checkpoints", "train", train_args("init_from=@ONNX/m.onnx"), r"m\.onnx"),
        refuse("ckpt-init-from-pretrained-traversal", "checkpoints", "train", train_args("init_from=pretrained:../../m"),
               r"pretrained"),
        refuse("ckpt-ckpt-path-other-task", "checkpoints", "train", train_args("ckpt_path=@B/m2.ckpt"),
               r"trained for .*task2"),
        refuse("ckpt-ckpt-path-fifo", "checkpoints", "train", train_args("ckpt_path=@D/m.ckpt"), r"m\.ckpt",
               lambda w, d: fifo(d / "m.ckpt")),
    ]
    # ---- ONNX exports and int8 copies
    PO = override(PC, ["ckpt=@D/m.onnx"])
    PQ = override(PC, ["ckpt=@D/m8.ckpt", "precision=int8"])
    PA = override(PC, ["ckpt=@D/m8.ckpt", "precision=auto", "device=cpu"])
    cases += [
        refuse("onnx-random-bytes", "onnx", "predict", PO, r"not a loadable ONNX", onnx_pair(model=os.urandom(3000))),
        refuse("onnx-no-contract", "onnx", "predict", PO, r"contract",
               steps(onnx_pair(), lambda w, d: (d / "m.onnx.json").unlink())),
        refuse("onnx-contract-truncated", "onnx", "predict", PO, r"m\.onnx\.json: not a captcha-lit export contract",
               onnx_pair(lambda data, w, d: json.dumps(data)[:40])),
        refuse("onnx-contract-list", "onnx", "predict", PO, r"m\.onnx\.json", onnx_pair(lambda data, w, d: "[1, 2]")),
        refuse("onnx-contract-task-object", "onnx", "predict", PO, r"m\.onnx\.json",
               onnx_pair(lambda data, w, d: data.update(task={"_target_": "os.system", "_args_": [touch_cmd(d)]}))),
        refuse("onnx-contract-other-size", "onnx", "predict", PO, r"different models",
               onnx_pair(lambda data, w, d: data.update(width=96))),
        refuse("onnx-contract-other-alphabet", "onnx", "predict", PO, r"different models",
               onnx_pair(lambda data, w, d: data.update(alphabet="0123456789abc"))),
        refuse("onnx-contract-fifo", "onnx", "predict", PO, r"m\.onnx",
               steps(onnx_pair(), lambda w, d: (d / "m.onnx.json").unlink(), lambda w, d: fifo(d / "m.onnx.json"))),
        refuse("onnx-contract-not-utf8", "onnx", "predict", PO, r"m\.onnx\.json",
               steps(onnx_pair(), at("m.onnx.json", b"\xff\xfe{\x00"))),
        succeed("onnx-contract-naming-python", "onnx", "predict", PO,
                predictions(data="@B/flat", model="@ONNX/m.onnx", names=flat),
                onnx_pair(lambda data, w, d: data.update({"_target_": "os.system", "_args_": [touch_cmd(d)],
                                                          "py/object": "os.system", "__reduce__": touch_cmd(d)}))),
        refuse("onnx-second-look-missing", "onnx", "predict", PO, r"missing",
               onnx_pair(lambda data, w, d: data.update(second_look={"model": "gone.onnx", "margin": 1.0}))),
        refuse("onnx-second-look-not-onnx", "onnx", "predict", PO, r"secret|not a loadable|m\.onnx",
               onnx_pair(lambda data, w, d: data.update(second_look={"model": "secret.txt", "margin": 1.0}) or
                         put(d / "secret.txt", "text\n"))),
        refuse("onnx-second-look-traversal", "onnx", "predict", PO, r"secret|outside|m\.onnx",
               onnx_pair(lambda data, w, d: data.update(second_look={"model": str(w.base / "outside/secret.txt"),
                                                                     "margin": 1.0}))),
        refuse("onnx-second-look-fifo", "onnx", "predict", PO, r"pipe|m\.onnx",
               onnx_pair(lambda data, w, d: data.update(second_look={"model": "pipe.onnx", "margin": 1.0}) or
                         fifo(d / "pipe.onnx"))),
        refuse("onnx-second-look-bad-margin", "onnx", "predict", PO, r"m\.onnx\.json",
               onnx_pair(lambda data, w, d: data.update(second_look={"model": "m.onnx", "margin": "wide"}))),
        refuse("onnx-custom-python-op", "onnx", "predict", PO, r"not a loadable ONNX", onnx_pair(model=custom_op_model)),
        refuse("onnx-external-data-fifo", "onnx", "predict", PO, r"m\.onnx",
               steps(onnx_pair(model=external_data_model("weights.bin")), lambda w, d: fifo(d / "weights.bin"))),
        refuse("onnx-external-data-traversal", "onnx", "predict", PO, r"m\.onnx",
               onnx_pair(model=external_data_model("../../base/outside/secret.txt"))),
        refuse("onnx-symlink-loop", "onnx", "predict", PO, r"m\.onnx",
               steps(onnx_pair(), lambda w, d: (d / "m.onnx").unlink(), lambda w, d: link(d / "m.onnx", "m.onnx"))),
        refuse("int8-copy-of-another-checkpoint", "onnx", "predict", PQ, r"another checkpoint",
               int8_copy(lambda c: c.update(checkpoint_sha256="0" * 64))),
        refuse("int8-copy-is-text", "onnx", "predict", PQ, r"m8\.int8\.onnx",
               int8_copy(files=lambda w, d: put(d / "m8.int8.onnx", "a copy\n"))),
        refuse("int8-copy-contract-fifo-forced", "onnx", "predict", PQ, r"m8",
               int8_copy(files=lambda w, d: ((d / "m8.int8.onnx.json").unlink(), fifo(d / "m8.int8.onnx.json")))),
        succeed("int8-copy-agreement-garbled", "onnx", "predict", PA, predictions(data="@B/flat", model="@D/m8.ckpt"),
                int8_copy(lambda c: c.update(agreement="all of them"))),
        succeed("int8-copy-fifo", "onnx", "predict", PA, predictions(data="@B/flat", model="@D/m8.ckpt"),
                int8_copy(files=lambda w, d: ((d / "m8.int8.onnx").unlink(), fifo(d / "m8.int8.onnx")))),
        succeed("int8-copy-contract-fifo", "onnx", "predict", PA, predictions(data="@B/flat", model="@D/m8.ckpt"),
                int8_copy(files=lambda w, d: ((d / "m8.int8.onnx.json").unlink(), fifo(d / "m8.int8.onnx.json")))),
        either("int8-second-look-fifo", "onnx", "predict", PA, predictions(data="@B/flat", model="@D/m8.ckpt"),
               int8_copy(files=lambda w, d: ((d / "m8.int8.fp32.onnx").unlink(), fifo(d / "m8.int8.fp32.onnx"))),
               match=r"m8"),
    ]
    return cases


# ------------------------------------------------------------------------------------------ resume
def edit_config(fn):
    """setup: a copy of the tiny run (run/), its config.yaml's text changed by fn(text, d)."""
    def do(w, d):
        shutil.copytree(w.run_dir(), d / "run", symlinks=True)
        path = d / "run" / "config.yaml"
        text = fn(path.read_text(), d)
        if text is not None:
            path.write_bytes(text.encode() if isinstance(text, str) else text)
    return do


def seed_line(value):
    return lambda text, d: re.sub(r"(?m)^seed: .*$", lambda m: f"seed: {value.replace('MARK', str(marker(d)))}", text)


def after_line(pattern, addition):
    """Adds lines after the first line matching pattern (keeping its indentation)."""
    def fn(text, d):
        found = re.search(rf"(?m)^( *){pattern}.*$", text)
        if not found:
            raise RuntimeError(f"no line {pattern!r} in config.yaml")
        pad = found[1]
        lines = "".join(f"\n{pad}{x.replace('MARK', str(marker(d)))}" for x in addition)
        return text[:found.end()] + lines + text[found.end():]
    return fn


def replace_in(old, new):
    def fn(text, d):
        if old not in text:
            raise RuntimeError(f"{old!r} not in config.yaml")
        return text.replace(old, new.replace("MARK", str(marker(d))), 1)
    return fn


def resume_case(id, fn, match=r"config\.yaml", extra=(), **kw):
    return refuse(f"resume-{id}", "resume", "train", ["resume=@D/run", *extra], match, edit_config(fn), **kw)


def with_run(*more):
    return steps(lambda w, d: shutil.copytree(w.run_dir(), d / "run", symlinks=True), *more)


def resumed_in_copy(w, d, res):
    """check: the copy was continued in place: its config names the copy, not the original."""
    text = (d / "run" / "config.yaml").read_text()
    if str(w.base / "run") in text:
        return "the copy's config.yaml still names the original run folder"
    if "final metrics" not in res.out:
        return "no final metrics printed"
    if any((d / "run").rglob("*.tmp")):
        return "a temporary file is left in the run folder"
    return None


def resume_cases() -> list:
    M = r"config\.yaml: (refused|not a)"
    cases = [
        resume_case("oc-create-interpolation", seed_line("${oc.create:{_target_: os.system, _args_: ['touch MARK']}}"), M),
        resume_case("oc-create-interpolation-quoted",
                    seed_line('"${oc.create:{_target_: os.system, _args_: [\'touch MARK\']}}"'), r"holds an interpolation"),
        resume_case("oc-create-in-a-nested-value",
                    replace_in("  lr: 0.001", "  lr: \"${oc.create:{_target_: os.system, _args_: ['touch MARK']}}\""),
                    r"optimizer\.lr holds an interpolation"),
        resume_case("oc-env-resolver", seed_line("${oc.env:HOME}"), M),
        resume_case("oc-decode-resolver", seed_line("${oc.decode:'[1, 2]'}"), M),
        resume_case("custom-resolver", seed_line("${python:__import__('os').system('touch MARK')}"), M),
        resume_case("interpolation-in-a-key", lambda text, d: text + "${oc.env:HOME}: 1\n", M),
        resume_case("interpolation-in-a-list", lambda text, d: text + "extra:\n- ${oc.env:HOME}\n", M),
        resume_case("python-object-apply", seed_line("!!python/object/apply:os.system ['touch MARK']"), M),
        resume_case("python-name", seed_line("!!python/name:os.system"), M),
        resume_case("python-object-new", seed_line("!!python/object/new:subprocess.Popen [['touch', 'MARK']]"), M),
        resume_case("target-os-system-with-args", replace_in("_target_: torch.optim.Adam",
                                                             "_target_: os.system\n  _args_: ['touch MARK']"), M),
        resume_case("target-builtins-exec", replace_in("_target_: torch.optim.Adam", "_target_: builtins.exec"),
                    r"refused: it names builtins\.exec"),
        resume_case("target-torch-hub", replace_in("_target_: torch.optim.Adam", "_target_: torch.hub.load"),
                    r"refused: it names torch\.hub\.load"),
        resume_case("target-in-a-new-callback", replace_in("callbacks:\n", "callbacks:\n  evil:\n    _target_: os.system\n"
                                                           "    command: touch MARK\n"), r"refused: it names os\.system"),
        resume_case("target-under-an-old-prefix", replace_in("_target_: torch.optim.Adam",
                                                             "_target_: captcha_lit.module.os.system"), r"refused: it names"),
        resume_case("dunder-key", lambda text, d: text + "__class__: os.system\n", M),
        resume_case("list-instead-of-mapping", lambda text, d: "- 1\n- 2\n", M),
        resume_case("empty-file", lambda text, d: "", M),
        resume_case("a-number", lambda text, d: "42\n", M),
        resume_case("not-utf8", lambda text, d: text.encode().replace(b"seed: 0", b"seed: \xff\xfe"), M),
        resume_case("broken-yaml", lambda text, d: text + "\n  : - [ {\n", M),
        resume_case("recursive-alias", lambda text, d: text + "loop: &a\n- *a\n", r"config\.yaml"),
        resume_case("deep-nesting", lambda text, d: text + "deep: " + "[" * 20000 + "]" * 20000 + "\n", r"config\.yaml"),
        resume_case("task-null", lambda text, d: re.sub(r"(?ms)^task:\n(  .*?\n)+", "task: null\n", text), r"task"),
        resume_case("no-trainer-section", lambda text, d: re.sub(r"(?ms)^trainer:\n(  .*?\n)+", "", text), r"trainer"),
        resume_case("widths-text", lambda text, d: re.sub(r"(?ms)^  widths:\n(  - .*?\n)+", "  widths: abc\n", text),
                    r"model\.widths"),
        resume_case("config-fifo", lambda text, d: ((d / "run/config.yaml").unlink(), fifo(d / "run/config.yaml"))
                    and None, r"config\.yaml"),
        resume_case("config-a-folder", lambda text, d: ((d / "run/config.yaml").unlink(),
                                                        (d / "run/config.yaml").mkdir()) and None, r"config\.yaml"),
        refuse("resume-truncated-last", "resume", "train", ["resume=@D/run"], r"last\.ckpt: not a readable checkpoint",
               with_run(lambda w, d: put(d / "run/checkpoints/last.ckpt",
                                         (d / "run/checkpoints/last.ckpt").read_bytes()[:1000]))),
        refuse("resume-pickled-last", "resume", "train", ["resume=@D/run"], r"last\.ckpt: refused",
               with_run(lambda w, d: (d / "run/checkpoints/last.ckpt").unlink(), evil("run/checkpoints/last.ckpt"))),
        refuse("resume-last-of-another-task", "resume", "train", ["resume=@D/run"], r"trained for",
               with_run(lambda w, d: shutil.copy(w.base / "m2.ckpt", d / "run/checkpoints/last.ckpt"))),
        refuse("resume-no-last", "resume", "train", ["resume=@D/run"], r"last\.ckpt",
               with_run(lambda w, d: (d / "run/checkpoints/last.ckpt").unlink())),
        refuse("resume-last-fifo", "resume", "train", ["resume=@D/run"], r"last\.ckpt",
               with_run(lambda w, d: (d / "run/checkpoints/last.ckpt").unlink(), lambda w, d: fifo(d / "run/checkpoints/last.ckpt"))),
        refuse("resume-last-symlink-loop", "resume", "train", ["resume=@D/run"], r"last\.ckpt",
               with_run(lambda w, d: (d / "run/checkpoints/last.ckpt").unlink(),
                        lambda w, d: link(d / "run/checkpoints/last.ckpt", "last.ckpt"))),
        refuse("resume-missing-folder", "resume", "train", ["resume=@D/nope"], r"resume="),
        refuse("resume-folder-is-a-file", "resume", "train", ["resume=@B/m.ckpt"], r"resume="),
        refuse("resume-changes-what-it-trains", "resume", "train", ["resume=@D/run", "optimizer.lr=1", "data.batch_size=8"],
               r"cannot change", with_run()),
        refuse("resume-a-new-run-into-a-used-folder", "resume", "train", train_args(run="@D/run"),
               r"already holds a run's checkpoints", with_run()),
        succeed("resume-a-copied-run-in-the-copy", "resume", "train", ["resume=@D/run"], resumed_in_copy,
                with_run(lambda w, d: put(d / "run/hubconf.py", HUBCONF.format(marker=marker(d))),
                         lambda w, d: put(d / "run/checkpoints/.last.ckpt.abc123.tmp", b"PK\x03\x04 half")),
                mutable=("run/*",), timeout=180),
        succeed("resume-last-linked-to-the-original", "resume", "train", ["resume=@D/run"], resumed_in_copy,
                with_run(lambda w, d: (d / "run/checkpoints/last.ckpt").unlink(),
                         lambda w, d: link(d / "run/checkpoints/last.ckpt", w.base / "run/checkpoints/last.ckpt")),
                mutable=("run/*",), timeout=180),
    ]
    return cases


# ------------------------------------------------------------------------------------------ outputs
PL = ["ckpt=@D/m.ckpt", "data_dir=@D/d", "precision=32", "progress=false", "num_workers=0"]


def out_case(id, output, match=r"one of the inputs", setup=None, args=PL):
    return refuse(f"out-{id}", "outputs", "predict", override(args, [f"output={output}"]), match,
                  steps(copy("d"), copy("m.ckpt"), *(setup or [])))


def output_cases() -> list:
    names = [f"task1/{i:05d}.png" for i in range(6)]
    fake = lambda rel: (lambda w, d: put(d / rel, b"a copy"))  # noqa: E731
    return [
        out_case("annotations-csv", "@D/d/annotations.csv"),
        out_case("an-image", "@D/d/task1/00000.png"),
        out_case("the-checkpoint", "@D/m.ckpt"),
        out_case("int8-copy", "@D/m.int8.onnx", setup=[fake("m.int8.onnx")]),
        out_case("int8-contract", "@D/m.int8.onnx.json", setup=[fake("m.int8.onnx"), fake("m.int8.onnx.json")]),
        out_case("int8-fp32-original", "@D/m.int8.fp32.onnx", setup=[fake("m.int8.onnx"), fake("m.int8.fp32.onnx")]),
        out_case("onnx-contract", "@D/m.onnx.json", setup=[onnx_pair()], args=override(PL, ["ckpt=@D/m.onnx"])),
        out_case("onnx-model", "@D/m.onnx", setup=[onnx_pair()], args=override(PL, ["ckpt=@D/m.onnx"])),
        out_case("symlink-to-an-image", "@D/link.csv", setup=[lambda w, d: link(d / "link.csv", d / "d/task1/00000.png")]),
        out_case("symlinked-folder-to-the-checkpoint", "@D/alias/m.ckpt", setup=[lambda w, d: link(d / "alias", d)]),
        out_case("relative-path-to-an-image", "@D/d/task1/../task1/00001.png"),
        out_case("sample-submission", "@D/d/sample_submission.csv",
                 setup=[lambda w, d: write_csv(d / "d/sample_submission.csv", [(n, "0") for n in names])]),
        out_case("fifo", "@D/pipe.csv", r"not a regular file", [lambda w, d: fifo(d / "pipe.csv")]),
        out_case("dev-null", "/dev/null", r"not a regular file"),
        out_case("a-folder", "@D/d", r"is a folder"),
        out_case("under-a-file", "@D/m.ckpt/s.csv", r"not writable|m\.ckpt"),
        out_case("mistakes-picture-onto-an-image", "@D/d/task1/00000.csv", setup=[
            lambda w, d: shutil.copy(d / "d/task1/00000.png", d / "d/task1/00000.mistakes_task1.png"),
            lambda w, d: put(d / "d/annotations.csv", (d / "d/annotations.csv").read_text() + "task1/00000.mistakes_task1.png,7\n")]),
        out_case("confusion-picture-onto-an-image", "@D/d/out.csv", setup=[
            lambda w, d: shutil.copy(d / "d/task1/00000.png", d / "d/out.confusion.png"),
            lambda w, d: put(d / "d/annotations.csv", (d / "d/annotations.csv").read_text() + "out.confusion.png,7\n")]),
        out_case("confusion-picture-linked-to-the-checkpoint", "@D/out.csv",
                 setup=[lambda w, d: link(d / "out.confusion.png", d / "m.ckpt")]),
        out_case("metrics-linked-to-the-csv", "@D/out.csv",
                 setup=[lambda w, d: link(d / "out.metrics.json", d / "d/annotations.csv")]),
        out_case("mistakes-picture-is-a-fifo", "@D/out.csv", r"not a regular file",
                 [lambda w, d: fifo(d / "out.mistakes_task1.png")]),
        out_case("onto-an-image-of-a-plain-folder", "@D/p/0.png", setup=[copy("flat", "p")],
                 args=override(PL, ["data_dir=@D/p"])),
        succeed("out-hardlink-of-an-image", "outputs", "predict", override(PL, ["output=@D/hard.csv"]),
                predictions(out="hard.csv", model="@D/m.ckpt", names=names),
                steps(copy("d"), copy("m.ckpt"), lambda w, d: os.link(d / "d/task1/00000.png", d / "hard.csv")),
                mutable=("hard.csv",)),
        succeed("out-dangling-symlink", "outputs", "predict", override(PL, ["output=@D/dl.csv"]),
                lambda w, d, res: predictions(out="dl.csv", model="@D/m.ckpt")(w, d, res) or
                (f"wrote through the link to {d / 'elsewhere/new.csv'}" if (d / "elsewhere/new.csv").exists() else None),
                steps(copy("d"), copy("m.ckpt"), lambda w, d: (d / "elsewhere").mkdir(),
                      lambda w, d: link(d / "dl.csv", d / "elsewhere/new.csv")), mutable=("dl.csv",)),
        succeed("out-in-missing-folders", "outputs", "predict", override(PL, ["output=@D/a/b/c/out.csv"]),
                predictions(out="a/b/c/out.csv", model="@D/m.ckpt", names=names), steps(copy("d"), copy("m.ckpt"))),
        succeed("out-replaces-an-old-output", "outputs", "predict", override(PL, ["output=@D/out.csv"]),
                predictions(out="out.csv", model="@D/m.ckpt", names=names),
                steps(copy("d"), copy("m.ckpt"), lambda w, d: put(d / "out.csv", "filename,label\nold.png,1\n")),
                mutable=("out.csv",)),
    ]


# ------------------------------------------------------------------------------------------ export
def export_cases() -> list:
    E = lambda id, args, match, setup=None, **kw: refuse(f"export-{id}", "export", "export", args, match,  # noqa: E731
                                                          steps(copy("m.ckpt"), *([setup] if setup else [])), **kw)

    def onnx_reads(rel):
        def check(w, d, res):
            from captcha_lit import CaptchaReader
            images = sorted((w.base / "flat").glob("*.png"))
            got = CaptchaReader.from_onnx(d / rel).read(images)
            want = w.expected(w.base / "m.ckpt", images)
            return None if got == want else f"{rel} reads {got}, the checkpoint {want}"
        return check

    def weights_load(w, d, res):
        from captcha_lit.model.checkpoint import read_checkpoint
        read_checkpoint(d / "w.ckpt")
        return None
    return [
        E("onto-its-checkpoint", ["@D/m.ckpt", "@D/m.ckpt"], r"the checkpoint being exported"),
        E("onto-a-link-to-its-checkpoint", ["@D/m.ckpt", "@D/out.onnx"], r"the checkpoint being exported",
          lambda w, d: link(d / "out.onnx", d / "m.ckpt")),
        E("weights-onto-its-checkpoint", ["@D/m.ckpt", "@D/m.ckpt", "--format", "weights"], r"the checkpoint being exported"),
        E("ddddocr-charsets-linked-to-checkpoint", ["@D/m.ckpt", "@D/m", "--format", "ddddocr"],
          r"the checkpoint being exported", lambda w, d: link(d / "m.charsets.json", d / "m.ckpt")),
        E("int8-onto-an-image-it-reads", ["@D/m.ckpt", "@D/d/task1/00001.png", "--int8", "@D/d"], r"that is a file of",
          copy("d")),
        E("int8-onto-its-checkpoint", ["@D/m.ckpt", "@D/m.ckpt", "--int8", "@D/d"], r"the checkpoint being exported",
          copy("d")),
        E("int8-contract-linked-into-the-images", ["@D/m.ckpt", "--int8", "@D/d"], r"that is a file of|m\.int8",
          steps(copy("d"), lambda w, d: link(d / "m.int8.onnx.json", d / "d/task1/00000.png"))),
        E("int8-folder-holds-a-fifo", ["@D/m.ckpt", "--int8", "@D/p"], r"pipe\.png",
          steps(copy("flat", "p"), lambda w, d: fifo(d / "p/pipe.png"))),
        E("int8-folder-empty", ["@D/m.ckpt", "--int8", "@D/empty"], r"no images", lambda w, d: (d / "empty").mkdir()),
        E("int8-folder-missing", ["@D/m.ckpt", "--int8", "@D/nope"], r"nope"),
        E("int8-folder-of-text-pngs", ["@D/m.ckpt", "--int8", "@D/t"], r"not a readable image",
          lambda w, d: [put(d / f"t/{i}.png", "text") for i in range(3)]),
        E("int8-with-ddddocr", ["@D/m.ckpt", "@D/x", "--format", "ddddocr", "--int8", "@B/d"], r"--int8"),
        E("int8-with-weights", ["@D/m.ckpt", "@D/w.ckpt", "--format", "weights", "--int8", "@B/d"], r"--int8"),
        E("weights-without-output", ["@D/m.ckpt", "--format", "weights"], r"name the output"),
        E("unknown-format", ["@D/m.ckpt", "--format", "tflite"], r"format"),
        E("unknown-flag", ["@D/m.ckpt", "--fp8"], r"unrecognized|fp8"),
        E("no-arguments", [], r"ckpt|required"),
        E("missing-checkpoint", ["@D/nope.ckpt", "@D/out.onnx"], r"nope\.ckpt"),
        E("fifo-checkpoint", ["@D/pipe.ckpt", "@D/out.onnx"], r"pipe\.ckpt", lambda w, d: fifo(d / "pipe.ckpt")),
        E("text-checkpoint", ["@D/t.ckpt", "@D/out.onnx"], r"t\.ckpt", at("t.ckpt", "hello\n")),
        E("output-a-folder", ["@D/m.ckpt", "@D/sub"], r"is a folder", lambda w, d: (d / "sub").mkdir()),
        E("output-dev-null", ["@D/m.ckpt", "/dev/null"], r"not a regular file"),
        E("output-in-missing-folder", ["@D/m.ckpt", "@D/no/such/out.onnx"], r"does not exist"),
        E("output-fifo", ["@D/m.ckpt", "@D/pipe.onnx"], r"not a regular file", lambda w, d: fifo(d / "pipe.onnx")),
        E("onnx-over-a-ddddocr-export", ["@D/m.ckpt", "@D/x.onnx"], r"ddddocr export",
          lambda w, d: (put(d / "x.onnx", b"onnx"), put(d / "x.charsets.json", "{}"))),
        E("ddddocr-over-an-onnx-export", ["@D/m.ckpt", "@D/x", "--format", "ddddocr"], r"ONNX export is there",
          lambda w, d: (put(d / "x.onnx", b"onnx"), put(d / "x.onnx.json", "{}"))),
        succeed("export-onnx-reads-as-the-checkpoint", "export", "export", ["@D/m.ckpt", "@D/out.onnx"],
                lambda w, d, res: files_exist("out.onnx", "out.onnx.json")(w, d, res) or onnx_reads("out.onnx")(w, d, res),
                copy("m.ckpt")),
        succeed("export-weights-load", "export", "export", ["@D/m.ckpt", "@D/w.ckpt", "--format", "weights"],
                lambda w, d, res: files_exist("w.ckpt")(w, d, res) or weights_load(w, d, res), copy("m.ckpt")),
        succeed("export-int8-copy", "export", "export", ["@D/m.ckpt", "--int8", "@B/d"],
                files_exist("m.int8.onnx", "m.int8.onnx.json", "m.int8.fp32.onnx"), copy("m.ckpt"), timeout=120),
    ]


# ------------------------------------------------------------------------------------------ generate
def generate_cases() -> list:
    G = lambda id, extra, match, setup=None: refuse(f"gen-{id}", "generate", "generate", override(G_BASE, extra),  # noqa: E731
                                                    match, setup)

    def generated(n):
        def check(w, d, res):
            rows = csv_rows(d / "g/annotations.csv")
            pngs = sorted((d / "g").rglob("*.png"))
            return None if len(rows) == n + 1 and len(pngs) == n else f"{len(rows) - 1} rows, {len(pngs)} images"
        return check
    return [
        G("out-a-file", ["out=@D/f"], r"is a file", at("f", "x")),
        G("out-dev-null", ["out=/dev/null"], r"out="),
        G("out-fifo", ["out=@D/pipe"], r"out=", lambda w, d: fifo(d / "pipe")),
        G("out-symlink-loop", ["out=@D/loop"], r"loop", lambda w, d: link(d / "loop", "loop")),
        G("out-under-a-file", ["out=@D/f/g"], r"f", at("f", "x")),
        G("out-holds-images", ["out=@D/p"], r"already holds", copy("flat", "p")),
        G("out-holds-annotations", ["out=@D/p"], r"already holds", at("p/annotations.csv", "filename,label\n")),
        G("length-zero", ["tasks.task1.length=0"], r"length"),
        G("length-negative-range", ["tasks.task1.length=[3,1]"], r"length"),
        G("alphabet-empty", ["tasks.task1.alphabet=''"], r"alphabet"),
        G("alphabet-repeats", ["tasks.task1.alphabet=aab"], r"alphabet"),
        G("width-zero", ["tasks.task1.width=0"], r"width"),
        G("width-huge", ["tasks.task1.width=100000"], r"width"),
        G("task-name-traversal", ["tasks.task1.name=../../escape"], r"name"),
        G("num-text", ["num.task1=many"], r"num\.task1"),
        G("num-negative", ["num.task1=-1"], r"num\.task1"),
        G("num-fraction", ["num.task1=1.5"], r"num\.task1"),
        G("num-bool", ["num.task1=true"], r"num\.task1"),
        G("num-quoted", ["num.task1='3'"], r"num\.task1"),
        G("font-sizes-zero", ["font_sizes=[0]"], r"font"),
        G("font-sizes-text", ["font_sizes=abc"], r"font"),
        succeed("gen-three-images", "generate", "generate", override(G_BASE, ["num.task1=3"]), generated(3)),
        succeed("gen-into-an-empty-folder", "generate", "generate", override(G_BASE, ["num.task1=2"]), generated(2),
                lambda w, d: (d / "g").mkdir()),
        either("gen-nothing-to-write", "generate", "generate", override(G_BASE, ["num.task1=0"]), generated(0)),
    ]


# ------------------------------------------------------------------------------------------ signals
def many_images(n=3000):
    def do(w, d):
        (d / "many").mkdir()
        png = w.base / "flat" / "0.png"
        for i in range(n):
            os.link(png, d / "many" / f"{i:05d}.png")
    return do


def no_tmp_and(*rels):
    def check(w, d, res):
        tmp = [str(p) for p in d.rglob("*.tmp")]
        return f"left {tmp[:3]}" if tmp else no_file(*rels)(w, d, res)
    return check


def no_images(w, d, res):
    left = [p for p in (d / "g").rglob("*") if p.is_file()] if (d / "g").exists() else []
    return f"left {len(left)} files in g/" if left else None


def stopped_cleanly(w, d, res):
    return None if "stopped: every request in flight was answered" in res.out else "no `stopped` line"


def signal_cases() -> list:
    predict_args = ["ckpt=@B/m.ckpt", "data_dir=@D/many", "output=@D/out.csv", "batch_size=16", "num_workers=2",
                    "precision=32"]
    gen_args = ["out=@D/g", "num.task1=20000", "num.task2=0", "num.task3=0", "num_workers=2"]
    S = lambda id, cmd, args, sig, trigger, code, check=None, setup=None, **kw: Case(  # noqa: E731
        f"signal-{id}", "signals", cmd, args, "signal", None, setup, check, send=(sig, trigger, code), **kw)
    return [
        S("predict-ctrl-c", "predict", predict_args, signal.SIGINT, ("text", "reading task1"), 130,
          no_tmp_and("out.csv"), many_images()),
        S("predict-sigterm", "predict", predict_args, signal.SIGTERM, ("text", "reading task1"), 143,
          no_tmp_and("out.csv"), many_images()),
        S("generate-ctrl-c", "generate", gen_args, signal.SIGINT, ("text", "writing"), 130, no_images),
        S("generate-sigterm", "generate", gen_args, signal.SIGTERM, ("text", "writing"), 143, no_images),
        S("train-ctrl-c-at-start", "train", train_args(), signal.SIGINT, ("text", "trainer.precision="), 130,
          no_tmp_and()),
        S("train-sigterm-at-start", "train", train_args(), signal.SIGTERM, ("text", "trainer.precision="), 143,
          no_tmp_and()),
        S("export-int8-sigterm", "export", ["@D/m.ckpt", "--int8", "@D/many"], signal.SIGTERM, ("glob", ".m.int8.onnx.*.tmp"),
          143, no_tmp_and("m.int8.onnx", "m.int8.onnx.json", "m.int8.fp32.onnx"), steps(copy("m.ckpt"), many_images(600))),
        S("serve-sigterm", "serve", S_BASE, signal.SIGTERM, "banner", 0, stopped_cleanly, banner="serving"),
        S("serve-ctrl-c", "serve", S_BASE, signal.SIGINT, "banner", 130, banner="serving"),
        S("label-sigterm", "label", L_BASE, signal.SIGTERM, "banner", 0, stopped_cleanly, copy("flat", "imgs"),
          banner="labelling"),
        S("label-ctrl-c", "label", L_BASE, signal.SIGINT, "banner", 130, None, copy("flat", "imgs"), banner="labelling"),
    ]


# ------------------------------------------------------------------------------------------ HTTP
def raw_http(port, request: bytes, timeout=20.0, stall_after=None) -> tuple[int, dict | str]:
    """(status, JSON or text) of a request written by hand; socket.timeout when no answer comes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(request)
        except OSError:  # answered and closed before taking it all
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
                if stall_after is not None and b"\r\n\r\n" in answer:
                    break
        except ConnectionResetError:
            pass
    head, _, payload = answer.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("the server closed the connection without an answer")
    status = int(head.split()[1])
    if b"chunked" in head.lower():
        body, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2:]
        payload = body
    if b"application/json" in head.lower():
        try:
            return status, json.loads(payload)
        except ValueError:
            return status, payload.decode(errors="replace")
    return status, payload.decode(errors="replace")


def request(method, path, body=b"", headers=None, length=True) -> bytes:
    headers = {"Host": "x", "Connection": "close", **(headers or {})}
    if length and "Content-Length" not in headers and "Transfer-Encoding" not in headers and method != "GET":
        headers["Content-Length"] = str(len(body))
    return f"{method} {path} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + \
        b"\r\n" + body


def json_request(path, payload, method="POST") -> bytes:
    return request(method, path, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def multipart(files: dict, fields: dict = None) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, items in files.items():
        for filename, data in (items if isinstance(items, list) else [items]):
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                      f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def multipart_request(path, files, fields=None) -> bytes:
    body, headers = multipart(files, fields)
    return request("POST", path, body, headers)


def server_verdict(s: dict, err_before: int, outcome_line):
    """A server that died or printed a traceback while answering: TRACEBACK, whatever it answered."""
    if s["proc"].poll() is not None:
        return "TRACEBACK", f"the server exited ({s['proc'].returncode}): {s['pipes'].text('err').strip()[-200:]}"
    new = s["pipes"].text("err")[err_before:]
    if "Traceback" in new:
        return "TRACEBACK", "the server printed a traceback: " + new.strip().splitlines()[-1][:200]
    return outcome_line


def settle(s: dict, quiet=0.3, most=1.5):
    """Waits until the server's stderr has been quiet for `quiet` s: a traceback it logs after
    answering is blamed on the request that caused it, not on the next one."""
    end, seen, since = time.monotonic() + most, len(s["pipes"].text("err")), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.05)
        now = len(s["pipes"].text("err"))
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def http_case(id, cat, make, statuses, words=None, page="server", check=None, protocol=False):
    """A hostile request against the shared server (page="server") or label page: OK when it answers
    one of `statuses` with a JSON error naming `words` (or, for 2xx, check(w, status, body) passes).
    protocol: garbage the HTTP parser itself refuses (uvicorn's plain-text 400 is fine)."""
    def run(w, d):
        s = w.server() if page == "server" else w.label_page()
        err_before = len(s["pipes"].text("err"))
        start = time.monotonic()
        try:
            raw = make(w, s)
            status, body = raw if isinstance(raw, tuple) else raw_http(s["port"], raw)
        except (socket.timeout, TimeoutError):
            return Result(timed_out=True, verdict=None, seconds=time.monotonic() - start)
        except (ConnectionError, OSError) as e:
            return Result(rc=0, verdict=server_verdict(s, err_before, ("WRONG", f"no answer: {type(e).__name__}: {e}")))
        except Exception as e:  # noqa: BLE001 - an answer the probe could not parse
            return Result(rc=0, verdict=server_verdict(s, err_before, ("WRONG", f"odd answer: {type(e).__name__}: {e}")))
        settle(s)
        text = json.dumps(body)[:160] if not isinstance(body, str) else \
            body[:160] if body[:160].isprintable() else f"({len(body)} bytes)"
        if status not in statuses:
            verdict = ("WRONG", f"{status}, not {'/'.join(map(str, sorted(statuses)))}: {text}")
        elif status >= 400 and not protocol and not (isinstance(body, dict) and
                                                     any(k in body for k in ("error", "msg", "message"))):
            verdict = ("WRONG", f"{status} without a JSON error: {text}")
        elif status >= 400 and words and not re.search(words, json.dumps(body)):
            verdict = ("WRONG", f"{status}, but not naming {words!r}: {text}")
        elif check is not None and (complaint := check(w, s, status, body)):
            verdict = ("WRONG", complaint)
        else:
            verdict = ("OK", f"{status} {text}")
        return Result(rc=0, verdict=server_verdict(s, err_before, verdict))
    return Case(id, cat, run=run, expect="ok")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def good_png(w, s) -> bytes:
    return s["images"][0].read_bytes()


def reads_right(w, s, status, body):
    got = [r.get("text") for r in body.get("results", [])] if isinstance(body, dict) else body
    want = s["expected"][: len(got)] if isinstance(got, list) else None
    return None if got == want else f"read {got}, the reader reads {want}"


def stalled_body(w, s):
    """Half a body, then silence: cut off by the body timeout (1 s here), not left waiting."""
    with socket.create_connection(("127.0.0.1", s["port"]), timeout=15) as sock:
        sock.sendall(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"im")
        answer = b""
        while chunk := sock.recv(65536):  # the head, then its body (the server may close, or not)
            answer += chunk
            head, _, payload = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length and len(payload) >= int(length[1]):
                break
    if not answer:
        raise ConnectionError("closed without an answer")
    head, _, payload = answer.partition(b"\r\n\r\n")
    try:
        body = json.loads(payload)
    except ValueError:
        body = payload.decode(errors="replace")
    return int(head.split()[1]), body


def stalled_headers(w, s):
    """Half a request line, then silence: the server must still serve others meanwhile."""
    with socket.create_connection(("127.0.0.1", s["port"]), timeout=15) as stall:
        stall.sendall(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-")
        status, body = raw_http(s["port"], request("GET", "/health"), timeout=10)
    return status, body


def serve_http_cases() -> list:
    H = lambda id, make, statuses, words=None, check=None, protocol=False: http_case(  # noqa: E731
        f"http-{id}", "serve-http", make, statuses, words, check=check, protocol=protocol)
    png = good_png
    return [
        H("oversized-content-length", lambda w, s: request("POST", "/read", b"x", {"Content-Length": str(2 << 20),
                                                                                    "Content-Type": "application/json"}),
          {413}),
        H("oversized-chunked", lambda w, s: request("POST", "/read", b"".join(b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
                                                                               for _ in range(20)) + b"0\r\n\r\n",
                                                     {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}),
          {413}),
        H("content-length-not-a-number", lambda w, s: request("POST", "/read", b"{}", {"Content-Length": "abc",
                                                                                       "Content-Type": "application/json"}),
          {400, 413}, protocol=True),
        H("content-length-negative", lambda w, s: request("POST", "/read", b"{}", {"Content-Length": "-1",
                                                                                   "Content-Type": "application/json"}),
          {400, 413}, protocol=True),
        H("bad-chunk-size", lambda w, s: request("POST", "/read", b"zz\r\nabc\r\n0\r\n\r\n",
                                                 {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}),
          {400}, protocol=True),
        H("png-header-20000x20000", lambda w, s: json_request("/read", {"images": [b64(png_header(20000, 20000))]}),
          {413}, "pixels"),
        H("png-header-20000x20000-multipart", lambda w, s: multipart_request("/read", {"image": ("b.png", png_header(20000, 20000))}),
          {413}, "pixels"),
        H("png-header-20000x20000-ocr-b64", lambda w, s: request("POST", "/ocr/b64/text", b64(png_header(20000, 20000)).encode()),
          {413}),
        H("png-header-zero-by-zero", lambda w, s: json_request("/read", {"images": [b64(png_header(0, 0))]}), {400}),
        H("truncated-png", lambda w, s: json_request("/read", {"images": [b64(png(w, s)[:60])]}), {400}, "not a readable"),
        H("text-as-an-image", lambda w, s: json_request("/read", {"images": [b64(b"hello world")]}), {400}, "not a readable"),
        H("empty-base64", lambda w, s: json_request("/read", {"images": [""]}), {400}, "base64"),
        H("broken-base64", lambda w, s: json_request("/read", {"images": ["abc$%^"]}), {400}, "base64"),
        H("data-url-without-comma", lambda w, s: json_request("/read", {"images": ["data:image/png;base64"]}), {400}),
        H("image-a-number", lambda w, s: json_request("/read", {"images": [12345]}), {400}),
        H("image-null", lambda w, s: json_request("/read", {"image": None}), {400}),
        H("unknown-task", lambda w, s: json_request("/read", {"images": [b64(png(w, s))], "task": "task9"}), {404}, "task9"),
        H("task-path-traversal", lambda w, s: json_request("/read", {"images": [b64(png(w, s))], "task": "../../m"}), {404}),
        H("task-not-a-name", lambda w, s: json_request("/read", {"images": [b64(png(w, s))], "task": {"a": 1}}), {400}),
        H("1000-images-json", lambda w, s: json_request("/read", {"images": [b64(png_bytes(8, 8))] * 1000}), {413}, "1000"),
        H("1000-images-multipart", lambda w, s: multipart_request("/read", {"image": [(f"{i}.png", png_bytes(8, 8))
                                                                                      for i in range(1000)]}), {400, 413}),
        H("no-images", lambda w, s: json_request("/read", {"images": []}), {400}, "no image"),
        H("json-list", lambda w, s: json_request("/read", [1, 2]), {400}, "JSON object"),
        H("images-not-a-list", lambda w, s: json_request("/read", {"images": "abc"}), {400}),
        H("json-nan", lambda w, s: request("POST", "/read", b'{"images": NaN}', {"Content-Type": "application/json"}), {400}),
        H("json-deeply-nested", lambda w, s: request("POST", "/read", b"[" * 100000 + b"]" * 100000,
                                                     {"Content-Type": "application/json"}), {400}),
        H("not-json", lambda w, s: request("POST", "/read", b"{not json", {"Content-Type": "application/json"}), {400}),
        H("not-utf8-json", lambda w, s: request("POST", "/read", b'{"images": ["\xff\xfe"]}', {"Content-Type": "application/json"}),
          {400}),
        H("no-content-type", lambda w, s: request("POST", "/read", b"abc", {"Content-Type": "text/plain"}), {415}),
        H("multipart-broken-boundary", lambda w, s: request("POST", "/read", b"--zzz\r\nnonsense",
                                                            {"Content-Type": "multipart/form-data; boundary=abc"}), {400}),
        H("multipart-no-boundary", lambda w, s: request("POST", "/read", b"abc", {"Content-Type": "multipart/form-data"}),
          {400}),
        H("stalled-half-body", stalled_body, {408}),
        H("stalled-headers-do-not-block-others", stalled_headers, {200}),
        H("wrong-method-get-read", lambda w, s: request("GET", "/read"), {405}),
        H("wrong-method-put-health", lambda w, s: request("PUT", "/health", b""), {405}),
        H("wrong-method-delete-models", lambda w, s: request("DELETE", "/models", b""), {405}),
        H("unknown-route", lambda w, s: request("GET", "/nowhere"), {404}),
        H("path-traversal-route", lambda w, s: request("GET", "/../../etc/passwd"), {404, 400}),
        H("encoded-traversal-route", lambda w, s: request("GET", "/docs/%2e%2e/%2e%2e/etc/passwd"), {404}),
        H("huge-header", lambda w, s: request("GET", "/health", headers={"X-Big": "a" * 200_000}), {400, 413, 431},
          protocol=True),
        H("ocr-file-without-field", lambda w, s: multipart_request("/ocr/file/json", {"file": ("a.png", png(w, s))}), {400}),
        H("ocr-b64-broken", lambda w, s: request("POST", "/ocr/b64/json", b"%%%"), {400}),
        H("ocr-unknown-kind", lambda w, s: request("POST", "/ocr/url/json", b"http://example.com/a.png"), {404}),
        H("ddddocr-fastapi-nothing", lambda w, s: multipart_request("/ocr", {}, {"x": "1"}), {400}),
        H("ddddocr-fastapi-text-as-image", lambda w, s: multipart_request("/ocr", {"file": ("a.png", b"GIF89a nonsense")}),
          {400}),
        # the reading options a request may set: each bad one named, and nothing read
        H("option-alphabet-unknown", lambda w, s: json_request("/read", {"images": [b64(png(w, s))], "task": "task3",
                                                                         "alphabet": "€"}), {400}, "alphabet"),
        H("option-alphabet-object", lambda w, s: json_request("/read", {"images": [b64(png(w, s))], "alphabet": {"a": 1}}),
          {400}, "alphabet"),
        H("option-lengths-reversed", lambda w, s: json_request("/read", {"images": [b64(png(w, s))], "lengths": "6-4"}),
          {400}, "lengths"),
        H("option-lengths-for-a-positions-model", lambda w, s: json_request("/read", {"images": [b64(png(w, s))], "task": "task3",
                                                                     "lengths": "1-100000000"}), {400}, "lengths"),
        H("option-fold-case-nonsense", lambda w, s: json_request("/read", {"images": [b64(png(w, s))], "fold_case": "maybe"}),
          {400}, "fold_case"),
        H("option-in-query-of-ocr-route", lambda w, s: request("POST", "/ocr/b64/json?lengths=x", b64(png(w, s)).encode()),
          {400}, "lengths"),
        H("option-charsets-unknown", lambda w, s: multipart_request("/ocr", {"file": ("a.png", png(w, s))},
                                                                    {"charsets": "€"}), {400}, "alphabet"),
        H("still-reads-a-good-image", lambda w, s: json_request("/read", {"images": [b64(png(w, s))], "task": "task3"}),
          {200}, check=reads_right),
        H("still-reads-many-multipart", lambda w, s: multipart_request("/read", {"image": [(p.name, p.read_bytes())
                                                                                           for p in s["images"][:8]]},
                                                                       {"task": "task3"}), {200}, check=reads_right),
        H("still-healthy", lambda w, s: request("GET", "/health"), {200},
          check=lambda w, s, status, body: None if isinstance(body, dict) and body.get("status") == "ok" else f"{body}"),
    ]


def label_http_cases() -> list:
    H = lambda id, make, statuses, words=None, check=None: http_case(f"label-http-{id}", "label-http", make,  # noqa: E731
                                                                     statuses, words, page="label", check=check)
    answer = lambda payload: (lambda w, s: json_request("/api/answer", payload))  # noqa: E731

    def csv_readable(w, s, status, body):
        from captcha_lit.data.folders import read_csv_rows
        from captcha_lit.errors import CaptchaError
        try:
            rows = read_csv_rows(s["folder"] / "annotations.csv")
        except CaptchaError as e:
            return f"the annotations.csv it wrote cannot be read back: {e}"
        labels = {name: label for _, name, label in rows}
        return None if labels.get("00001.png") == 'a,"b\'' else f"00001.png reads back as {labels.get('00001.png')!r}"

    def served_bytes(w, s, status, body):
        want = (s["folder"] / "00000.png").read_bytes()
        return None if body.encode("latin-1", errors="ignore")[:8] == want[:8] else "other bytes than the image"

    def raw_get(path):
        def make(w, s):
            with socket.create_connection(("127.0.0.1", s["port"]), timeout=20) as sock:
                sock.sendall(request("GET", path))
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            head, _, payload = answer.partition(b"\r\n\r\n")
            status = int(head.split()[1])
            return status, (json.loads(payload) if b"application/json" in head.lower() else payload.decode("latin-1"))
        return make
    return [
        H("image-dotdot", raw_get("/image/../annotations.csv"), {404}),
        H("image-dotdot-outside", raw_get("/image/../../base/outside/secret.txt"), {404}),
        H("image-encoded-dotdot", raw_get("/image/%2e%2e/%2e%2e/base/outside/secret.txt"), {404}),
        H("image-absolute", raw_get("/image//etc/hostname"), {404}),
        H("image-not-an-image", raw_get("/image/secret.txt"), {404}),
        H("image-fifo", raw_get("/image/pipe.png"), {404}),
        H("image-text-named-png", raw_get("/image/text.png"), {404}),
        H("image-good", raw_get("/image/00000.png"), {200}, check=served_bytes),
        H("answer-traversal-name", answer({"name": "../outside.png", "label": "1"}), {404}),
        H("answer-absolute-name", answer({"name": "/etc/hostname", "label": "1"}), {404}),
        H("answer-newline-label", answer({"name": "00000.png", "label": "1\n2"}), {400}),
        H("answer-label-a-list", answer({"name": "00000.png", "label": ["1"]}), {400}),
        H("answer-name-a-number", answer({"name": 5, "label": "1"}), {400}),
        H("answer-not-json", lambda w, s: request("POST", "/api/answer", b"{nope", {"Content-Type": "application/json"}),
          {400}),
        H("answer-json-list", answer([1, 2]), {400}),
        H("answer-nul-in-label", answer({"name": "00002.png", "label": "1\x002"}), {200, 400}),
        H("answer-huge-label", answer({"name": "00003.png", "label": "7" * 200_000}), {400, 413}),
        H("answer-comma-and-quotes", answer({"name": "00001.png", "label": 'a,"b\''}), {200}),
        H("answer-unreadable", answer({"name": "sub/00000.png", "label": None}), {200}),
        H("answers-read-back-by-train", lambda w, s: request("GET", "/api/items"), {200}, check=csv_readable),
        H("wrong-method", lambda w, s: request("PUT", "/api/answer", b"{}"), {405}),
        H("unknown-route", lambda w, s: request("GET", "/api/nowhere"), {404}),
    ]


# ------------------------------------------------------------------------------------------ serve and label, started
def port_in_use(w, d):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    w._held = sock  # kept open while the case runs
    put(d / "port", str(sock.getsockname()[1]))


def held_port(cmd_base):
    def args(w, d):
        return override(cmd_base, [f"port={(d / 'port').read_text()}"])
    return args


def items_answer(w, d, port):
    status, body = raw_http(port, request("GET", "/api/items"), timeout=20)
    if status != 200:
        return f"/api/items answered {status}"
    names = sorted(i["name"] for i in body["items"])
    return None if "pipe.png" not in names and "text.png" not in names else f"it lists {names}"


def server_cases() -> list:
    SR = lambda id, extra, match, setup=None, **kw: refuse(f"serve-{id}", "serve-cli", "serve",  # noqa: E731
                                                           override(S_BASE, extra) if isinstance(extra, list) else extra,
                                                           match, setup, banner="serving", **kw)
    LR = lambda id, extra, match, setup=None, **kw: refuse(f"label-{id}", "label", "label",  # noqa: E731
                                                           override(L_BASE, extra) if isinstance(extra, list) else extra,
                                                           match, steps(copy("flat", "imgs"), *([setup] if setup else [])),
                                                           banner="labelling", **kw)
    state = lambda text: at("imgs/.captcha-label.json", text)  # noqa: E731
    return [
        SR("ckpt-missing", ["ckpt=@D/nope.ckpt"], r"nope\.ckpt"),
        SR("ckpt-text", ["ckpt=@D/t.ckpt"], r"t\.ckpt", at("t.ckpt", "text")),
        SR("ckpt-fifo", ["ckpt=@D/p.ckpt"], r"p\.ckpt", lambda w, d: fifo(d / "p.ckpt")),
        SR("default-unknown-task", ["default=task9"], r"default=task9"),
        SR("port-in-use", held_port(S_BASE), r"cannot listen", port_in_use),
        SR("host-not-an-address", ["host=256.1.1.1"], r"host="),
        SR("two-models-of-one-task", ["ckpt=[@B/m.ckpt,@B/m3.ckpt,@B/m.ckpt]", "default=task2"], r"default=task2"),
        LR("no-data-dir", ["data_dir=null"], r"data_dir"),
        LR("data-dir-missing", ["data_dir=@D/nope"], r"no such folder"),
        LR("data-dir-a-file", ["data_dir=@B/m.ckpt"], r"no such folder|m\.ckpt"),
        LR("empty-folder", ["data_dir=@D/empty"], r"no images", lambda w, d: (d / "empty").mkdir()),
        LR("only-broken-images", ["data_dir=@D/t"], r"no images",
           lambda w, d: [put(d / "t/a.png", "text"), put(d / "t/b.png", b""), fifo(d / "t/c.png")]),
        LR("order-capitalised", ["order=Confidence"], r"order"),
        LR("state-broken-json", [], r"captcha-label\.json", state("{broken")),
        LR("state-a-list", [], r"captcha-label\.json", state("[1, 2]")),
        LR("state-counts-text", [], r"captcha-label\.json", state('{"counts": "many", "unreadable": 5}')),
        LR("state-not-utf8", [], r"captcha-label\.json", state(b"\xff\xfe{}")),
        LR("annotations-fifo", [], r"annotations\.csv", lambda w, d: fifo(d / "imgs/annotations.csv")),
        LR("annotations-not-utf8", [], r"annotations\.csv", at("imgs/annotations.csv", "filename,label\n0.png,\xe9\n".encode("latin-1"))),
        LR("annotations-wrong-header", [], r"annotations\.csv", at("imgs/annotations.csv", "name,text\n0.png,1\n")),
        LR("ckpt-missing", ["ckpt=@D/nope.ckpt"], r"nope\.ckpt"),
        LR("ckpt-text", ["ckpt=@D/t.ckpt"], r"t\.ckpt", at("t.ckpt", "text")),
        LR("ckpt-empty-run-folder", ["ckpt=@D/run"], r"no run with a checkpoint", lambda w, d: (d / "run").mkdir()),
        LR("port-in-use", held_port(L_BASE), r"cannot listen", port_in_use),
        Case("label-starts-past-a-fifo-and-text-pngs", "label", "label", L_BASE, "ok",
             setup=steps(copy("flat", "imgs"), lambda w, d: fifo(d / "imgs/pipe.png"), at("imgs/text.png", "x")),
             banner="labelling", on_banner=items_answer, check=lambda w, d, res: stopped_cleanly(w, d, res)),
        Case("label-state-fifo-is-refused", "label", "label", L_BASE, "refuse", "a named pipe",
             setup=steps(copy("flat", "imgs"), lambda w, d: fifo(d / "imgs/.captcha-label.json"))),
    ]


# ------------------------------------------------------------------------------------------ main
def all_cases() -> list:
    cases = (settings_cases() + files_cases() + checkpoint_cases() + output_cases() + export_cases()
             + generate_cases() + resume_cases() + signal_cases() + server_cases() + serve_http_cases()
             + label_http_cases())
    ids = [c.id for c in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise SystemExit(f"hostile.py: duplicate case ids {sorted(duplicates)}")
    return cases


def table(results: list) -> str:
    cats = list(dict.fromkeys(cat for _, cat, _, _, _ in results))
    width = max(len("category"), *map(len, cats), len("total"))
    lines = [f"{'category':<{width}} " + " ".join(f"{o:>9}" for o in OUTCOMES) + f" {'cases':>6}"]
    for cat in cats + ["total"]:
        rows = [r for r in results if cat == "total" or r[1] == cat]
        counts = [sum(r[2] == o for r in rows) for o in OUTCOMES]
        lines.append(f"{cat:<{width}} " + " ".join(f"{n:>9}" for n in counts) + f" {len(rows):>6}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", metavar="SUBSTRING", help="the cases whose id or category holds SUBSTRING")
    parser.add_argument("--limit", type=int, metavar="N", help="the first N of them")
    parser.add_argument("--jobs", type=int, default=1, help="1 only: cases run one at a time")
    parser.add_argument("--timeout", type=float, default=60, help="seconds a case may run (default 60)")
    parser.add_argument("--verbose", "-v", action="store_true", help="one row per case")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--memory-gb", type=float, default=16,
                        help="address space each command may map, in GiB (default 16; 0: no cap)")
    args = parser.parse_args(argv)
    MEMORY_LIMIT[0] = int(args.memory_gb * (1 << 30))
    if args.jobs != 1:
        parser.error("--jobs: only 1 (cases run one at a time; the machine has 2 cores)")
    cases = all_cases()
    if args.only:
        cases = [c for c in cases if args.only in c.id or args.only == c.cat]
    if args.limit is not None:
        cases = cases[: args.limit]
    if args.list:
        for c in cases:
            print(f"{c.id:<58} {c.cat:<12} {c.expect}")
        print(f"{len(cases)} cases")
        return 0
    if not cases:
        parser.error("no case matches")
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    print(f"hostile.py: {len(cases)} cases in {root}", flush=True)
    started = time.monotonic()
    w = World(root, args.timeout)
    results = []
    try:
        for i, c in enumerate(cases, 1):
            outcome, line, seconds = run_case(w, c)
            held = getattr(w, "_held", None)
            if held is not None:
                held.close()
                w._held = None
            results.append((c.id, c.cat, outcome, line, seconds))
            if args.verbose:
                print(f"{i:>4} {c.id:<58} {c.cat:<12} {outcome:<9} {seconds:6.1f}s  {line}", flush=True)
            elif sys.stderr.isatty():
                print(f"\r{i}/{len(cases)}", end="", file=sys.stderr, flush=True)
    finally:
        w.close()
        markers = [str(p) for p in root.rglob(MARKER + "*")]
        if markers:
            print(f"markers found: {markers}")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if not args.verbose and sys.stderr.isatty():
        print(file=sys.stderr)
    bad = [r for r in results if r[2] != "OK"]
    if bad and not args.verbose:
        print("not OK:")
        for id_, cat, outcome, line, seconds in bad:
            print(f"  {id_:<58} {cat:<12} {outcome:<9} {line}")
    print(table(results))
    print(f"total: {len(results)} cases, {len(results) - len(bad)} OK, {len(bad)} not OK, "
          f"{time.monotonic() - started:.0f} s")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
