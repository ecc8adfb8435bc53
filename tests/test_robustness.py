"""Bad input, interruptions and untrusted checkpoints: a CaptchaError naming the file, row or setting
(or a documented skip counted in a warning), never a library traceback or a silently wrong result;
an interrupted run resumes with one command; nothing is left half-written."""
import csv
import logging
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import captcha_lit.commands.train
from captcha_lit.model.checkpoint import load_module
from captcha_lit.data.datamodule import CaptchaDataModule
from captcha_lit.data.datasets import split
from captcha_lit.errors import CaptchaError
from captcha_lit.files import atomic_write_text
from captcha_lit.data.folders import read_labelled
from captcha_lit.commands.generate import generate
from captcha_lit.data.images import load_image
from captcha_lit.model.module import CaptchaModule
from captcha_lit.commands.predict import predict
from captcha_lit.data.tasks import preset
from captcha_lit.commands.resume import resume_config
from captcha_lit.commands.train import AtomicCheckpointIO, build, train

from tests.helpers import ROOT, TINY, compose_cfg, make_folder, module_args, write_csv

DIGITS = "0123456789"
ALNUM = DIGITS + "abcdefghijklmnopqrstuvwxyz"


def corrupt(path, how):
    """Turns a good PNG into a bad one with the same name."""
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "text": b"not an image\n", "empty": b""}[how])


def task1_datamodule(root, **kw):
    return CaptchaDataModule(preset("task1").config(), root=str(root), **kw)


# ---------------------------------------------------------------- images
@pytest.mark.parametrize("how", ["truncated", "text", "empty"])
def test_unreadable_png_names_the_file(tmp_path, how):
    root = make_folder(tmp_path / "d", {"task1": 6})
    corrupt(root / "task1" / "00003.png", how)
    with pytest.raises(CaptchaError, match=r"00003\.png: not a readable image"):
        load_image(root / "task1" / "00003.png", 72, 72)
    with pytest.raises(CaptchaError, match=r"00003\.png: not a readable image"):  # in-process materialize
        task1_datamodule(root, num_workers=0).setup("fit")


def test_unreadable_png_names_the_file_through_the_process_pool(tmp_path):
    """>= 1000 items and several workers: materialize decodes in a multiprocessing Pool."""
    root = make_folder(tmp_path / "d", {"task1": 1})
    good = root / "task1" / "00000.png"
    for i in range(1, 1200):
        os.link(good, root / "task1" / f"{i:05d}.png")
    write_csv(root, [(f"task1/{i:05d}.png", "7") for i in range(1200)])
    train_idx, _, _ = split(1200, 0.15, 0)
    bad = root / "task1" / f"{train_idx[700]:05d}.png"
    bad.unlink()
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CaptchaError, match=rf"{bad.name}: not a readable image"):
        task1_datamodule(root, num_workers=2).setup("fit")


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "P", "1", "RGB-small", "RGB-large"])
def test_other_modes_and_sizes_are_converted(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 72, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)  # 16-bit grayscale
    elif mode.startswith("RGB-"):
        img = rgb.resize((40, 30) if mode == "RGB-small" else (200, 150))
    else:
        img = rgb.convert(mode)
    img.save(tmp_path / "x.png")
    array = load_image(tmp_path / "x.png", 72, 72)
    assert array.shape == (72, 72, 3) and array.dtype == np.uint8
    if mode in ("L", "I;16"):  # the grey levels survive, not clipped to white
        assert np.abs(array[..., 0].astype(int) - np.asarray(rgb.convert("L"))).max() <= 1
    if mode == "RGBA":
        assert (array == np.asarray(rgb)).all()


@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_a_transparent_colour_key_is_laid_on_white(tmp_path, mode):
    img = Image.new(mode, (8, 8), 0)  # black everywhere, and black is the transparent colour
    if mode == "P":
        img.putpalette([0, 0, 0] + [255, 255, 255] * 255)  # index 0 black, every other white
    img.putpixel((0, 0), 255 if mode != "RGB" else (255, 255, 255))
    img.save(tmp_path / "x.png", transparency=0 if mode != "RGB" else (0, 0, 0))
    assert (load_image(tmp_path / "x.png", 8, 8) == 255).all()


def test_mixed_modes_load_through_the_datamodule(tmp_path):
    root = make_folder(tmp_path / "d", {"task1": 8})
    for i, mode in enumerate(["L", "RGBA", "P", "1"]):
        path = root / "task1" / f"{i:05d}.png"
        Image.open(path).convert(mode).resize((50, 90)).save(path)
    dm = task1_datamodule(root, num_workers=0, val_fraction=0.25)
    dm.setup("fit")
    assert dm.train_set.images.shape == (6, 72, 72, 3) and dm.val_set.images.shape == (2, 72, 72, 3)


# ---------------------------------------------------------------- the CSV
@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"task1/00000.png,1\ntask1/00001.png,2\n",
     "the first line must be the header 'filename,label', found 'task1/00000.png,1'"),
    (b"filename,label,source\ntask1/00000.png,1,real\n", "the first line must be the header 'filename,label'"),
    (b"filename,label\ntask1/00000.png,1,real\n", r"expected 2 fields \(filename,label\), found 3"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a UTF-8 CSV file"),
    (b"filename,label\n", "no rows below the header"),
], ids=["empty", "no-header", "extra-column-header", "extra-field", "not-utf8", "header-only"])
def test_bad_csv_names_the_file_and_what_is_wrong(tmp_path, content, message):
    root = make_folder(tmp_path / "d", {"task1": 2})
    (root / "annotations.csv").write_bytes(content)
    with pytest.raises(CaptchaError, match=r"annotations\.csv(, line 2)?: " + message):
        read_labelled(root, preset("task1"))


def test_csv_with_a_byte_order_mark_loads(tmp_path):
    root = make_folder(tmp_path / "d", {"task1": 3})
    path = root / "annotations.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as spreadsheets save "CSV UTF-8"
    assert len(read_labelled(root, preset("task1"))) == 3


def test_missing_csv_and_missing_image(tmp_path):
    root = make_folder(tmp_path / "d", {"task1": 3})
    with open(root / "annotations.csv", "a", newline="") as f:
        csv.writer(f).writerow(("task1/gone.png", "4"))
    with pytest.raises(CaptchaError, match=r"annotations\.csv, line 5: image .*gone\.png not found"):
        read_labelled(root, preset("task1"))
    (root / "annotations.csv").unlink()  # then the folder is read as label-named images
    with pytest.raises(CaptchaError, match=r"00000\.png: label '00000' does not fit task task1: length 5"):
        read_labelled(root, preset("task1"))


def test_bad_labels_are_dropped_and_counted(tmp_path, caplog):
    root = make_folder(tmp_path / "d", {"task2": 5})
    with open(root / "annotations.csv", "a", newline="") as f:  # no image needed: dropped before any file is read
        csv.writer(f).writerows([("task2/long.png", "abc"), ("task2/upper.png", "AB"), ("task2/punct.png", "a!"),
                                 ("task2/empty.png", "")])
    with caplog.at_level(logging.WARNING):
        items = read_labelled(root, preset("task2"))
    assert len(items) == 5
    assert "dropped 4 task2 rows (2 wrong length, 2 characters outside the alphabet)" in caplog.text
    assert "line 8 (task2/upper.png, 'AB'): characters 'AB' not in the alphabet" in caplog.text
    # the digits-only task1 drops letters the same way
    make_folder(root, {"task1": 4}, extra_rows=[("task1/letter.png", "a")])
    with caplog.at_level(logging.WARNING):
        assert len(read_labelled(root, preset("task1"))) == 4
    assert "dropped 1 task1 rows (1 characters outside the alphabet)" in caplog.text


def test_duplicate_rows(tmp_path, caplog):
    root = make_folder(tmp_path / "d", {"task1": 3})
    rows = list(csv.reader(open(root / "annotations.csv")))
    with open(root / "annotations.csv", "a", newline="") as f:
        csv.writer(f).writerows([rows[1], rows[1], rows[2]])
    with caplog.at_level(logging.WARNING):
        assert len(read_labelled(root, preset("task1"))) == 3
    assert "dropped 3 duplicate rows" in caplog.text
    other = "1" if rows[3][1] == "0" else "0"
    with open(root / "annotations.csv", "a", newline="") as f:
        csv.writer(f).writerow((rows[3][0], other))
    both = rf"lines 4 and 8: task1/00002\.png is labelled both '{rows[3][1]}' and '{other}'"
    with pytest.raises(CaptchaError, match=both):
        read_labelled(root, preset("task1"))


def test_folder_without_the_task_and_too_few_rows(tmp_path):
    root = make_folder(tmp_path / "d", {"task2": 4, "task3": 2})
    with pytest.raises(CaptchaError, match=r"no usable rows of task1 \(rows per folder prefix: task2: 4, task3: 2\)"):
        task1_datamodule(root, num_workers=0).setup("fit")
    root = make_folder(tmp_path / "e", {"task1": 1})
    with pytest.raises(CaptchaError, match=r"1 usable task1 image\(s\) leave none to train on after the validation "
                                           r"\(1\) and test \(0\) splits: add images, or lower data\.val_fraction=0.15 "
                                           r"or data\.test_fraction=0.0"):
        task1_datamodule(root, num_workers=0).setup("fit")


def test_cli_prints_one_error_line_and_no_traceback(tmp_path):
    root = make_folder(tmp_path / "d", {"task1": 4})
    corrupt(root / "task1" / "00002.png", "truncated")
    cmd = [sys.executable, str(ROOT / "train.py"), "data=folder", f"data.root={root}", "task=task1", "trainer=cpu",
           f"hydra.run.dir={tmp_path / 'run'}"] + TINY
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    assert len(errors) == 1 and "00002.png: not a readable image" in errors[0], result.stderr[-3000:]


# ---------------------------------------------------------------- configuration mistakes
@pytest.mark.parametrize("overrides, message", [
    (["task.length=0"], "task.length=0: lengths must be 1 or more"),
    (["task.alphabet=aa"], "task.alphabet: alphabet 'aa' must be non-empty and list each character once"),
    (["data=folder", "data.root=/nope"], "data.root=/nope: no such folder; point it at a folder of labelled images"),
    (["data=folder"], "data=folder and data=mixed read a labelled folder: add data.root=PATH"),
    (["task=auto"], "task=auto infers the task from labelled images: add data=folder"),
    (["data.batch_size=0"], "data.batch_size=0: must be a whole number of at least 1"),
    (["data.batch_size=abc"], "data.batch_size='abc': must be a whole number of at least 1"),
    (["data.batch_size=12.5"], "data.batch_size=12.5: must be a whole number of at least 1"),
    (["data.num_train=-5"], "data.num_train=-5: must be a whole number of at least 1"),
    (["optimizer.lr=-0.001"], "optimizer.lr=-0.001: must be a number above 0"),
    (["optimizer.lr=fast"], "optimizer.lr='fast': must be a number above 0"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be a whole number of at least 1"),
    (["model.ema=1.5"], "model.ema=1.5: must be a number at least 0 and below 1"),
    (["seed=x"], "seed='x': must be a whole number"),
    (["data=folder", "data.root=.", "data.val_fraction=0"], r"data.val_fraction=0: must be a number above 0 and below "
                                                             r"1 \(final=true"),
    (["int8=no"], "int8='no': must be true or false"),
    (["final=no"], "final='no': must be true or false"),
    (["data.batch_size=true"], "data.batch_size=True: must be a whole number of at least 1"),
    (["data.num_workers=two"], "data.num_workers='two': must be a whole number of at least 0, or null"),
    (["data=mixed", "data.root=.", "data.real_fraction=half"], "data.real_fraction='half': must be a number"),
    (["optimizer=sgd", "optimizer.momentum=-0.5"], "optimizer.momentum=-0.5: must be a number at least 0"),
    (["trainer.max_epochs=-1", "scheduler=onecycle"], "trainer.max_epochs=-1 \\(no end\\) with scheduler=onecycle"),
    (["trainer.max_epochs=-1", "scheduler=cosine"], "trainer.max_epochs=-1 \\(no end\\) with scheduler=cosine"),
    (["trainer.max_epochs=-1", "scheduler=none", "model.low_res=0.5"],
     "trainer.max_epochs=-1 \\(no end\\) with model.low_res=0.5"),
    (["experiment=pretrain_general", "trainer.reload_dataloaders_every_n_epochs=0"],
     "data.fresh_train=true renders new training images every epoch: it needs trainer.reload"),
    (["task=auto", "data=folder", "data.root=.", "task.min_width=abc"], "task.min_width='abc': must be a whole number"),
    (["task=auto", "data=folder", "data.root=.", "task.height=4"], "task.height=4: must be a whole number from 8 to 2048"),
    (["model.widths=[]"], r"model.widths=\[\]: must be a list of whole numbers from 1 to 4096"),
    (["model.strides=[0,2,2,2]"], r"model.strides=\[0, 2, 2, 2\]: must be a list of whole numbers"),
    (["model.head=ctc", "model.label_smoothing=0.1"], "model.label_smoothing=0.1 with model.head=ctc: CTC's loss takes no"),
    pytest.param(["trainer=gpu"], "no CUDA GPU is visible: use trainer=cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")),
], ids=["length-0", "alphabet-repeats", "missing-folder", "no-folder-given", "auto-without-folder", "batch-size-0",
        "batch-size-text", "batch-size-fraction", "num-train-negative", "lr-negative", "lr-text", "epochs-0", "ema-1.5",
        "seed-text", "val-fraction-0", "int8-no", "final-no", "batch-size-bool", "workers-text", "real-fraction-text",
        "momentum-negative", "endless-onecycle", "endless-cosine", "endless-low-res", "fresh-train-once",
        "auto-min-width-text", "auto-height-4", "widths-empty", "stride-0", "ctc-label-smoothing", "no-gpu"])
def test_config_mistakes_fail_before_any_work(tmp_path, monkeypatch, overrides, message):
    def no_work(*args, **kwargs):
        raise AssertionError("instantiated something before checking the config")
    monkeypatch.setattr(captcha_lit.commands.train, "build", no_work)
    cfg = compose_cfg("train", TINY + overrides, tmp_path / "run")
    with pytest.raises(CaptchaError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_errors_from_instantiated_objects_are_not_wrapped_by_hydra():
    node = OmegaConf.create({"_target_": "captcha_lit.data.datamodule.CaptchaDataModule", "task": preset("task1").config(),
                             "epoch_size": 10, "epoch_pixels": 1000})
    with pytest.raises(CaptchaError, match="data.epoch_size and data.epoch_pixels both set"):
        build(node)


# ---------------------------------------------------------------- untrusted checkpoints
def save_tiny_checkpoint(path, **hparams):
    module = CaptchaModule(**{**module_args("task1"), "widths": (16, 16, 32, 32), **hparams})
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(), "epoch": 0}, path)
    return module


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle-2", "pickle-5"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_that_would_run_code_is_refused(tmp_path, fmt):
    marker, path = tmp_path / "MARKER", tmp_path / "evil.ckpt"
    module = CaptchaModule(**module_args("task1"), widths=(16, 16, 32, 32))
    payload = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(), "x": RunsCode(marker)}
    if fmt.startswith("pickle-"):  # a bare pickle; protocol 5's framing is refused even before the global
        path.write_bytes(pickle.dumps({"x": RunsCode(marker)}, protocol=int(fmt[-1])))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=fmt == "zip")
    refused = (r"refused: it would import (posix|os|nt)\.system, and loading it could run code" if fmt != "pickle-5"
               else "not a readable checkpoint")
    with pytest.raises(CaptchaError, match=r"evil\.ckpt: " + refused):
        load_module(path)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["random", "text", "empty", "truncated", "tensor", "directory", "missing"])
def test_non_checkpoint_files_give_a_clear_error(tmp_path, kind):
    path = tmp_path / "model.ckpt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "text":
        path.write_text("this is a text file, not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        save_tiny_checkpoint(path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "tensor":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "directory":
        path.mkdir()
    message = {"tensor": "not a captcha-lit checkpoint", "directory": "a folder, not a checkpoint",
               "missing": "no such file"}
    with pytest.raises(CaptchaError, match=message.get(kind, r"model\.ckpt: not a readable checkpoint \(")):
        load_module(path)


def test_random_bytes_never_escape_as_library_errors(tmp_path):
    path = tmp_path / "noise.ckpt"
    for seed in range(20):
        path.write_bytes(np.random.default_rng(seed).bytes(64 + 97 * seed))
        with pytest.raises(CaptchaError, match="noise.ckpt: (not a readable checkpoint|refused)"):
            load_module(path)


def test_checkpoint_for_another_task_or_size_is_refused(tmp_path):
    path = tmp_path / "task1.ckpt"
    module = save_tiny_checkpoint(path)
    want = dict(task="task1", alphabet=DIGITS, width=72, height=72)
    loaded = load_module(path, expect=want)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), module.state_dict().values()))
    for key, value in (("task", "task2"), ("alphabet", ALNUM), ("width", 96), ("height", 64)):
        with pytest.raises(CaptchaError, match=rf"task1\.ckpt: trained for {key}=.*, not the {key}={value!r} asked"):
            load_module(path, expect={**want, key: value})
    mismatched = torch.load(path, weights_only=True)
    mismatched["hyper_parameters"]["widths"] = [32, 32, 64, 64]  # weights of another shape
    torch.save(mismatched, path)
    with pytest.raises(CaptchaError, match="hyperparameters and weights do not fit"):
        load_module(path)


# ---------------------------------------------------------------- nothing half-written
def failing_write(exc):
    def write(obj, f, *args, **kwargs):
        pathlib.Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk, then it fails
        raise exc
    return write


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_checkpoint_save_keeps_the_previous_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1, "w": torch.ones(4)}, path)
    monkeypatch.setattr(torch, "save", failing_write(exc))
    with pytest.raises(type(exc)):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert os.listdir(path.parent) == ["last.ckpt"]
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["w"], torch.ones(4))


def test_failed_text_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "out" / "predictions.csv"
    atomic_write_text(path, "filename,label\na.png,1\n")

    def write_text(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[:5])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    with pytest.raises(OSError):
        atomic_write_text(path, "filename,label\nb.png,2\n" * 100)
    monkeypatch.undo()
    assert os.listdir(path.parent) == ["predictions.csv"] and path.read_text() == "filename,label\na.png,1\n"


# ---------------------------------------------------------------- interruptions
def csv_rows(run):
    """(version, row) for every row the run's CSV logger wrote."""
    rows = []
    for path in sorted((run / "csv").glob("version_*/metrics.csv")):
        try:
            rows += [(path.parent.name, r) for r in csv.DictReader(open(path))]
        except (OSError, csv.Error):  # being rewritten right now
            pass
    return rows


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_with_one_command(tmp_path):
    # the learning rate logged, and written to metrics.csv, at every step: it tells where training is
    overrides = TINY + ["trainer.max_epochs=3", "trainer=cpu", "test=false", "callbacks.lr_monitor.logging_interval=step",
                        "trainer.log_every_n_steps=1", "+logger.csv.flush_logs_every_n_steps=1"]
    run, steps_per_epoch = tmp_path / "run", -(-256 // 32)  # TINY: 256 images in batches of 32
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run}"] + overrides,
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:  # until the third step of the second epoch
        if any(r.get("lr-Adam") and int(r["step"]) >= steps_per_epoch + 2 for _, r in csv_rows(run)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0, "the kill came too late: the second epoch had ended"

    result = subprocess.run([sys.executable, str(ROOT / "train.py"), f"resume={run}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    final = torch.load(last, weights_only=True)
    assert (final["epoch"], final["global_step"]) == (2, 3 * steps_per_epoch)  # what an uninterrupted run ends with
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[1:] == ["last.ckpt"]  # one best-*, no temp files

    # each epoch validated exactly once: epoch 0 before the kill, 1 and 2 in the resumed run's csv version
    val = [(version, int(r["epoch"]), float(r["val/loss"])) for version, r in csv_rows(run) if r.get("val/loss")]
    assert [(v, e) for v, e, _ in val] == [("version_0", 0), ("version_1", 1), ("version_1", 2)], val
    assert all(np.isfinite(loss) for _, _, loss in val)


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    module = CaptchaModule(**module_args("task1"), widths=(8, 8, 16, 16))
    state = module.state_dict()
    state["net.heads.weight"][0, 0] = float("nan")
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": state}, tmp_path / "nan.ckpt")
    with pytest.raises(CaptchaError, match="nan.ckpt: its weights hold NaN or infinite values"):
        load_module(tmp_path / "nan.ckpt")


def test_a_single_image_is_read_as_one_image(tmp_path):
    from captcha_lit import CaptchaReader
    module = CaptchaModule(**module_args("task3"), widths=(8, 8, 16, 16))
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, tmp_path / "m.ckpt")
    root = make_folder(tmp_path / "d", {"task3": 2})
    reader = CaptchaReader.from_checkpoint(tmp_path / "m.ckpt")
    path = root / "task3" / "00000.png"
    both = reader.read([path, root / "task3" / "00001.png"])
    assert reader.read(str(path)) == reader.read(path) == reader.read(Image.open(path)) == both[:1]
    assert len(both[0]) == 4


def test_a_callback_or_logger_set_to_null_is_left_out(tmp_path):
    cfg = compose_cfg("train", TINY + ["trainer=cpu", "trainer.max_steps=1", "test=false", "callbacks.lr_monitor=null",
                                       "callbacks.validation_images=null"], tmp_path)
    train(cfg)  # Lightning refuses a None among its callbacks
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


# ---------------------------------------------------------------- outputs never land on inputs
def test_prediction_output_that_is_an_input_is_refused_before_any_work(tmp_path):
    save_tiny_checkpoint(tmp_path / "m.ckpt")
    data = make_folder(tmp_path / "d", {"task1": 3})
    labels = (data / "annotations.csv").read_text()
    image = data / "task1" / "00000.png"
    (tmp_path / "link.csv").symlink_to(image)
    (tmp_path / "m.int8.onnx").write_bytes(b"a copy")  # the checkpoint's int8 copy is read with it
    os.mkfifo(tmp_path / "pipe.csv")
    before = {p: p.read_bytes() for p in (image, tmp_path / "m.int8.onnx")}
    inputs = "it would write .*, one of the inputs"
    for output, message in ((data / "annotations.csv", inputs), (image, inputs), (tmp_path / "m.ckpt", inputs),
                            (tmp_path / "m.int8.onnx", inputs), (tmp_path / "link.csv", inputs),
                            (data / "task1" / "00000.csv", inputs),
                            (tmp_path / "pipe.csv", ".*pipe.csv is not a regular file"),
                            (data, ".* is a folder"), (tmp_path / "m.ckpt" / "s.csv", "not writable")):
        if output.name == "00000.csv":  # the mistakes picture of task1 would land on an image named so
            (data / "task1" / "00000.mistakes_task1.png").write_bytes(image.read_bytes())
            (data / "annotations.csv").write_text(labels + "task1/00000.mistakes_task1.png,7\n")
        cfg = compose_cfg("predict", [f"ckpt={tmp_path / 'm.ckpt'}", f"data_dir={data}", f"output={output}",
                                      "progress=false"])
        with pytest.raises(CaptchaError, match=f"output={output}: {message}"):
            predict(cfg)
    assert all(p.read_bytes() == b for p, b in before.items())


def test_export_onto_its_own_checkpoint_is_refused(tmp_path):
    from captcha_lit.reading.export import export_ddddocr, export_onnx
    save_tiny_checkpoint(tmp_path / "m.ckpt")
    before = (tmp_path / "m.ckpt").read_bytes()
    with pytest.raises(CaptchaError, match="that is the checkpoint being exported"):
        export_onnx(tmp_path / "m.ckpt", tmp_path / "m.ckpt")
    (tmp_path / "m.charsets.json").symlink_to(tmp_path / "m.ckpt")
    with pytest.raises(CaptchaError, match="that is the checkpoint being exported"):
        export_ddddocr(tmp_path / "m.ckpt", tmp_path / "m")
    assert (tmp_path / "m.ckpt").read_bytes() == before


def test_continuing_from_a_checkpoint_of_another_task_is_refused_before_any_work(tmp_path):
    save_tiny_checkpoint(tmp_path / "m.ckpt")  # task1
    cfg = compose_cfg("train", TINY + ["trainer=cpu", "task=task2", f"ckpt_path={tmp_path / 'm.ckpt'}"], tmp_path / "run")
    with pytest.raises(CaptchaError, match=r"m.ckpt: trained for .*'task1', not the .*'task2' asked for"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_onnx_and_ddddocr_exports_never_replace_each_other(tmp_path, capsys):
    from captcha_lit.reading.export import export_ddddocr, export_onnx
    from captcha_lit.commands.cli import export as export_main
    save_tiny_checkpoint(tmp_path / "m.ckpt")
    export_main([str(tmp_path / "m.ckpt"), "--format", "ddddocr"])  # by default beside the ONNX export's m.onnx
    assert {p.name for p in tmp_path.iterdir()} == {"m.ckpt", "m.ddddocr.onnx", "m.ddddocr.charsets.json"}
    export_onnx(tmp_path / "m.ckpt")
    made = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CaptchaError, match=r"m.onnx: a captcha-lit ONNX export is there \(m.onnx.json beside it\)"):
        export_ddddocr(tmp_path / "m.ckpt", tmp_path / "m")
    with pytest.raises(CaptchaError, match=r"m.ddddocr.onnx: a ddddocr export is there"):
        export_onnx(tmp_path / "m.ckpt", tmp_path / "m.ddddocr.onnx")
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "m.ckpt"), "w.ckpt", "--format", "weights", "--int8", str(tmp_path)])
    assert "--int8 makes an int8 ONNX model (--format onnx), not --format weights" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == made


def test_a_packaged_reader_exports_into_the_working_folder(tmp_path, monkeypatch, capsys):
    from captcha_lit.commands.cli import export as export_main
    from captcha_lit.model.packaged import PRETRAINED
    installed = sorted(p.name for p in PRETRAINED.iterdir())
    monkeypatch.chdir(tmp_path)
    export_main(["pretrained:general", "--format", "ddddocr"])  # the general reader, for ddddocr itself
    assert {p.name for p in tmp_path.iterdir()} == {"general.ddddocr.onnx", "general.ddddocr.charsets.json"}
    assert sorted(p.name for p in PRETRAINED.iterdir()) == installed  # nothing written into the package
    with pytest.raises(SystemExit):
        export_main(["pretrained:nope"])
    assert "pretrained:nope: captcha-lit ships pretrained readers for general, task1, task2, task3" in \
        capsys.readouterr().err


def test_a_second_run_into_a_used_run_folder_is_refused(tmp_path):
    overrides = TINY + ["trainer=cpu", "trainer.max_steps=1", "test=false"]
    train(compose_cfg("train", overrides, tmp_path))
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    config = (tmp_path / "config.yaml").read_text()
    with pytest.raises(CaptchaError, match="already holds a run's checkpoints: continue it with resume="):
        train(compose_cfg("train", overrides + ["seed=1"], tmp_path))
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before
    assert (tmp_path / "config.yaml").read_text() == config


def test_generate_into_a_folder_with_images_is_refused(tmp_path):
    make_folder(tmp_path / "d", {"task1": 2})
    (tmp_path / "d" / "annotations.csv").unlink()
    before = (tmp_path / "d" / "task1" / "00000.png").read_bytes()
    with pytest.raises(CaptchaError, match="already holds images or an annotations.csv"):
        generate(compose_cfg("generate", [f"out={tmp_path / 'd'}", "num.task1=2", "num.task2=0", "num.task3=0"]))
    assert (tmp_path / "d" / "task1" / "00000.png").read_bytes() == before
    with pytest.raises(CaptchaError, match=r"num.task1='many': must be a whole number"):
        generate(compose_cfg("generate", [f"out={tmp_path / 'e'}", "num.task1=many"]))


# ---------------------------------------------------------------- resume runs only what this project names
def resumable_run(tmp_path, *overrides):
    run = tmp_path / "run"
    train(compose_cfg("train", TINY + ["trainer=cpu", "trainer.max_epochs=1", "test=false", *overrides], run))
    return run


def test_resume_refuses_foreign_targets_and_unsafe_overrides_and_applies_safe_ones(tmp_path):
    run = resumable_run(tmp_path / "onecycle")  # the default's one-cycle schedule ends with its last epoch
    cfg = compose_cfg("train", [f"resume={run}", "trainer.max_epochs=2"])
    with pytest.raises(CaptchaError, match=r"one-cycle schedule was laid out for 1 epochs and cannot be stretched; "
                                           r"train on from its weights in a new run instead: init_from=.*last.ckpt"):
        resume_config(cfg, [f"resume={run}", "trainer.max_epochs=2"])

    run = resumable_run(tmp_path, "scheduler=none")
    cfg = compose_cfg("train", [f"resume={run}", "trainer.max_epochs=2", "trainer.devices=1"])
    resumed = resume_config(cfg, [f"resume={run}", "trainer.max_epochs=2", "trainer.devices=1"])
    assert (resumed.trainer.max_epochs, resumed.trainer.devices, resumed.ckpt_path) == \
        (2, 1, str(run / "checkpoints" / "last.ckpt"))
    with pytest.raises(CaptchaError, match=r"data.batch_size, optimizer.lr cannot change \(only trainer.devices"):
        resume_config(cfg, [f"resume={run}", "data.batch_size=8", "optimizer.lr=1", "trainer.max_epochs=2"])

    saved = OmegaConf.load(run / "config.yaml")
    saved.optimizer._target_ = "torch.hub.load"  # what a shared run folder could smuggle in
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    with pytest.raises(CaptchaError, match="refused: it names torch.hub.load, which captcha-lit's configs never do"):
        resume_config(cfg)


def test_resume_never_resolves_or_builds_what_a_stored_config_smuggles_in(tmp_path):
    run = resumable_run(tmp_path, "scheduler=none")
    marker = tmp_path / "ran"
    good = (run / "config.yaml").read_text()
    payloads = {  # each would run code if the stored file were resolved or instantiated as it is
        "an oc.create interpolation": good.replace("seed: 0", "seed: ${oc.create:{_target_: os.system, _args_: "
                                                   f"['touch {marker}']}}}}"),
        "a custom resolver": good.replace("seed: 0", "seed: ${oc.env:HOME}"),
        "an _args_ key": good.replace("  _target_: torch.optim.Adam", "  _target_: torch.optim.Adam\n  _args_: [1]"),
        "a python object tag": good.replace("seed: 0", "seed: !!python/object/apply:os.system ['touch x']"),
        "a list instead of a mapping": "- 1\n- 2\n",
        "an empty file": "",
    }
    for what, text in payloads.items():
        (run / "config.yaml").write_text(text)
        with pytest.raises(CaptchaError, match=r"config.yaml: (refused|not a r)"):
            resume_config(compose_cfg("train", [f"resume={run}"]), [f"resume={run}"])
        assert not marker.exists(), what


def test_a_copied_run_resumes_in_the_copy(tmp_path):
    import shutil
    run = resumable_run(tmp_path, "scheduler=none")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    resumed = resume_config(compose_cfg("train", [f"resume={copy}"]), [f"resume={copy}"])
    dirs = {c.dirpath for c in resumed.callbacks.values() if c is not None and "dirpath" in c}
    assert dirs == {str(copy / "checkpoints")} and resumed.ckpt_path == str(copy / "checkpoints" / "last.ckpt")
    assert str(run) not in OmegaConf.to_yaml(resumed)


def test_resume_from_a_truncated_last_checkpoint_is_one_line(tmp_path):
    run = resumable_run(tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CaptchaError, match="last.ckpt: not a readable checkpoint"):
        resume_config(compose_cfg("train", [f"resume={run}"]))


# ---------------------------------------------------------------- broken exports and caches
def test_broken_onnx_files_and_contracts_are_one_line(tmp_path):
    from captcha_lit import CaptchaReader
    from captcha_lit.reading.export import export_onnx
    save_tiny_checkpoint(tmp_path / "m.ckpt")
    onnx = export_onnx(tmp_path / "m.ckpt", tmp_path / "m.onnx")
    contract = tmp_path / "m.onnx.json"
    good = contract.read_text()
    contract.write_text(good[: len(good) // 2])
    with pytest.raises(CaptchaError, match="m.onnx.json: not a captcha-lit export contract"):
        CaptchaReader.from_onnx(onnx)
    contract.write_text(good.replace('"width": 72', '"width": 96'))  # another task's contract
    with pytest.raises(CaptchaError, match=r"the graph takes \[72, 72\] .* says 96x72: they belong to different"):
        CaptchaReader.from_onnx(onnx)
    contract.write_text(good)
    onnx.write_bytes(onnx.read_bytes()[:500])
    with pytest.raises(CaptchaError, match="m.onnx: not a loadable ONNX model"):
        CaptchaReader.from_onnx(onnx)


def test_a_truncated_cache_file_is_one_line(tmp_path):
    dm = lambda: CaptchaDataModule(preset("task1").config(), num_train=40, num_val=8, num_workers=0,  # noqa: E731
                                   cache_dir=str(tmp_path))
    dm().setup()
    victim = sorted(tmp_path.glob("*-images.npy"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(CaptchaError, match="a broken cache file .* delete"):
        dm().setup()


# ---------------------------------------------------------------- Ctrl-C
def interrupt_when(cmd, cwd, marker, timeout=300, sig=signal.SIGINT):
    """Starts cmd, sends one `sig` once `marker` appears on its stderr (or, for a path, once that
    file exists), and returns (exit code, stderr, seconds from the signal to the exit). Every
    process it started (its worker pools) must be gone a few seconds after it exits."""
    # SIGINT back to its default in the child: a shell that starts this suite in the background
    # hands it SIGINT ignored, and Python keeps an inherited ignore (no KeyboardInterrupt). Its own
    # session: its process group is what it started
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    reader = threading.Thread(target=lambda: [seen.append(c) for c in iter(lambda: proc.stderr.read(1), b"")],
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    ready = marker.exists if isinstance(marker, pathlib.Path) else lambda: marker.encode() in b"".join(seen)
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted: " + b"".join(seen).decode()[-2000:]
    if not ready():  # a slow or busy machine: say so, rather than fail later on what the marker promised
        proc.kill()
        raise AssertionError(f"{marker} did not appear within {timeout} s")
    time.sleep(0.5)  # well inside the work
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    elapsed = time.monotonic() - sent
    reader.join(5)
    for _ in range(50):  # the process group empties once its workers have ended
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"workers of {cmd[:3]} still running 5 s after it exited")
    return code, b"".join(seen).decode(errors="replace"), elapsed


@pytest.mark.slow
@pytest.mark.parametrize("sig, expected", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_ctrl_c_or_sigterm_ends_prediction_with_one_line(tmp_path, sig, expected):
    module = CaptchaModule(**module_args("task1"))  # the report's network: slow enough to interrupt
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, tmp_path / "m.ckpt")
    data = make_folder(tmp_path / "d", {"task1": 1})
    (data / "annotations.csv").unlink()
    png = (data / "task1" / "00000.png").read_bytes()
    for i in range(1, 3000):
        (data / "task1" / f"{i:05d}.png").write_bytes(png)
    cmd = [sys.executable, str(ROOT / "predict.py"), f"ckpt={tmp_path / 'm.ckpt'}", f"data_dir={data}",
           "output=out.csv", "batch_size=16", "num_workers=2", "precision=32"]
    code, stderr, seconds = interrupt_when(cmd, tmp_path, "reading task1", sig=sig)
    assert code == expected and seconds < 15, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("interrupted"), stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "m.ckpt"]  # no output, no temporary file


def test_captcha_label_refuses_bad_lengths_even_without_a_reader(tmp_path):
    cmd = [sys.executable, "-c", "from captcha_lit.commands.cli import label; label()", f"data_dir={tmp_path}",
           "ckpt=null", "port=0", "lengths=four"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # a server started instead would hang
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: lengths='four': give the number of characters")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_one_ctrl_c_or_sigterm_ends_generate_and_takes_back_its_images(tmp_path, sig, code, name):
    cmd = [sys.executable, "-c", "from captcha_lit.commands.cli import generate; generate()", f"out={tmp_path / 'g'}",
           "num.task1=20000", "num.task2=0", "num.task3=0", "num_workers=2"]
    got, stderr, seconds = interrupt_when(cmd, tmp_path, "writing", sig=sig)
    assert got == code and seconds < 15, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == \
        f"interrupted ({name}); nothing half-written was left", stderr[-2000:]
    assert [p for p in (tmp_path / "g").rglob("*") if p.is_file()] == []  # no images, no annotations, no temp files


@pytest.mark.slow
@pytest.mark.parametrize("sig, expected", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_ctrl_c_or_sigterm_ends_training_with_one_line_and_resumable_checkpoints(tmp_path, sig, expected):
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run}", "trainer=cpu"] + TINY + \
        ["trainer.max_epochs=50", "data.num_train=2000"]
    code, stderr, seconds = interrupt_when(cmd, tmp_path, run / "checkpoints" / "last.ckpt", sig=sig)  # in the 2nd epoch
    assert code == expected and seconds < 15, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("interrupted"), stderr[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # the first epoch's, intact
    assert not list((run / "checkpoints").glob(".*.tmp"))


# ---------------------------------------------------------------- only regular files are read
def test_named_pipes_where_images_are_expected_are_refused_not_waited_on(tmp_path):
    """A named pipe blocks whoever opens it until a writer comes: reading one would hang forever."""
    from captcha_lit.commands.cli import export as export_main
    from captcha_lit.data.folders import read_csv_rows
    save_tiny_checkpoint(tmp_path / "m.ckpt")
    plain = make_folder(tmp_path / "plain", {"task1": 2})
    (plain / "annotations.csv").unlink()
    os.mkfifo(plain / "task1" / "pipe.png")
    cfg = compose_cfg("predict", [f"ckpt={tmp_path / 'm.ckpt'}", f"data_dir={plain}", f"output={tmp_path / 'o.csv'}",
                                  "progress=false", "num_workers=0"])
    with pytest.raises(CaptchaError, match=r"pipe.png: a named pipe, not an image"):
        predict(cfg)
    labelled = make_folder(tmp_path / "labelled", {"task1": 2}, extra_rows=[("task1/pipe.png", "3")])
    os.mkfifo(labelled / "task1" / "pipe.png")
    cfg = compose_cfg("train", TINY + ["data=folder", f"data.root={labelled}", "trainer=cpu", "trainer.max_steps=1"],
                      tmp_path / "run")
    with pytest.raises(CaptchaError, match=r"pipe.png: a named pipe, not an image"):
        train(cfg)
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(CaptchaError, match=r"pipe.csv: a named pipe, not a CSV file"):
        read_csv_rows(tmp_path / "pipe.csv")
    with pytest.raises(SystemExit) as exit_:
        export_main([str(tmp_path / "m.ckpt"), "--int8", str(plain)])
    assert exit_.value.code == 2
    assert not (tmp_path / "m.int8.onnx").exists()


def test_an_int8_export_never_lands_on_an_image_it_reads(tmp_path, capsys):
    from captcha_lit.commands.cli import export as export_main
    save_tiny_checkpoint(tmp_path / "m.ckpt")
    data = make_folder(tmp_path / "d", {"task1": 4})
    image = data / "task1" / "00001.png"
    before = image.read_bytes()
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "m.ckpt"), str(image), "--int8", str(data)])
    assert "that is a file of" in capsys.readouterr().err and image.read_bytes() == before


@pytest.mark.parametrize("command, overrides, message", [
    ("predict", ["ckpt=m.ckpt", "data_dir=.", "device=5"], "device=5: must be one of auto, cpu, cuda, or cuda:N"),
    ("predict", ["ckpt=m.ckpt", "data_dir=.", "allow_partial=no"], "allow_partial='no': must be true or false"),
    ("predict", ["ckpt=m.ckpt", "data_dir=.", "precision=64"], "precision=64: must be one of auto, int8, 32"),
    ("predict", ["ckpt=[]", "data_dir=."], r"ckpt=\[\]: must be a checkpoint, export or run folder"),
    ("serve", ["port=-1"], "port=-1: must be a whole number from 0 to 65535"),
    ("serve", ["max_images=many"], "max_images='many': must be a whole number of at least 1"),
    ("serve", ["timeout_s=0"], "timeout_s=0: must be a number above 0"),
    ("label", ["data_dir=.", "order=random"], "order='random': must be one of listed, confidence, disagree"),
    ("generate", ["out=g", "num_workers=abc"], "num_workers='abc': must be a whole number of at least 0, or null"),
    ("generate", ["out=g", "seed=1.5"], "seed=1.5: must be a whole number"),
])
def test_every_command_checks_its_settings_types_in_one_place(command, overrides, message):
    from captcha_lit.commands.settings import check_settings
    with pytest.raises(CaptchaError, match=message):
        check_settings(compose_cfg(command, overrides), command)


@pytest.mark.parametrize("overrides, message", [
    (["data_dir=."], "no model given: add ckpt=PATH"),
    (["ckpt=m.ckpt"], "no input given: add data_dir=DIR"),
])
def test_predict_names_the_setting_a_first_run_forgets(overrides, message):
    from captcha_lit.commands.predict import predict
    with pytest.raises(CaptchaError, match=message):
        predict(compose_cfg("predict", overrides))


def test_odd_inputs_to_the_reader_and_generate_are_one_line(tmp_path):
    from captcha_lit import CaptchaReader
    from captcha_lit.commands.generate import generate
    save_tiny_checkpoint(tmp_path / "m.ckpt")
    reader = CaptchaReader.from_checkpoint(tmp_path / "m.ckpt", precision="32")
    with pytest.raises(CaptchaError, match=r"read\(NoneType\): give an image"):
        reader.read(None)
    with pytest.raises(CaptchaError, match=r"images\[1\] is a int"):
        reader.read([Image.new("RGB", (72, 72)), 3])
    image = Image.new("RGB", (72, 72))
    image.close()
    with pytest.raises(CaptchaError, match=r"images\[0\]: a PIL image that cannot be read"):
        reader.read([image])
    with pytest.raises(CaptchaError, match=r"ensemble\(\[\]\)"):
        CaptchaReader.ensemble([])
    with pytest.raises(CaptchaError, match=r"images\[1\]: an empty image \(0x0\)"):  # it read as '8' before
        reader.read([Image.new("RGB", (72, 72)), Image.new("RGB", (0, 0))])
    with pytest.raises(CaptchaError, match=r"images\[1\]: an array of shape \(72, 72, 3\) and dtype float32"):
        reader.read([Image.new("RGB", (72, 72)), np.zeros((72, 72, 3), np.float32)])
    with pytest.raises(CaptchaError, match="tasks.task1: task.length=0: lengths must be 1 or more"):
        generate(compose_cfg("generate", [f"out={tmp_path / 'g'}", "tasks.task1.length=0"]))
    with pytest.raises(CaptchaError, match="tasks.task1: task.alphabet: alphabet '' must be non-empty"):
        generate(compose_cfg("generate", [f"out={tmp_path / 'h'}", "tasks.task1.alphabet=''"]))
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()


@pytest.mark.slow
def test_an_interrupted_general_pretraining_resumes_where_it_stopped(tmp_path):
    run = tmp_path / "general"
    tiny = ["data.num_train=256", "data.num_val=32", "data.batch_size=32", "model.widths=[16,16,32,32]",
            "data.num_workers=1", "trainer.enable_progress_bar=false", "test=false", "trainer=cpu"]
    cmd = [sys.executable, str(ROOT / "train.py"), "experiment=pretrain_general", "trainer.max_epochs=3",
           f"hydra.run.dir={run}"] + tiny
    code, stderr, _ = interrupt_when(cmd, tmp_path, run / "checkpoints" / "last.ckpt")  # during the second epoch
    assert code == 130, stderr[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), f"resume={run}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["hyper_parameters"]["task"] == "general"
    with open(run / "csv" / "version_1" / "metrics.csv") as f:  # the resumed run's own log
        epochs = {row["epoch"] for row in csv.DictReader(f) if row.get("val/exact_match")}
    assert epochs == {"1", "2"}


@pytest.mark.parametrize("script, args, message", [
    ("train.py", ["data.batchsize=3"], "error: Could not override 'data.batchsize'."),
    ("train.py", ["optimizer=adamm"], "error: In 'train': Could not find 'optimizer/adamm'"),
    ("predict.py", ["ckpt=[a.ckpt,b.ckpt", "data_dir=."], "error: no viable alternative at input"),
])
def test_hydras_own_command_line_errors_are_one_line_too(tmp_path, script, args, message):
    result = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
