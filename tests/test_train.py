import subprocess
import sys

import pytest
import torch

from captcha_lit.checkpoint import load_module
from captcha_lit.train import train

from conftest import ROOT, TINY, compose_cfg


@pytest.mark.parametrize("task", ["task1", "task2", "task3"])
def test_fast_dev_run_each_task(task, tmp_path, capsys):
    cfg = compose_cfg("train", [f"task={task}", "trainer=cpu", "trainer.fast_dev_run=true"] + TINY, tmp_path)
    score = train(cfg)
    assert 0.0 <= score <= 1.0
    assert "final metrics:" in capsys.readouterr().out


def test_training_checkpoints_and_round_trip(tmp_path, capsys):
    cfg = compose_cfg("train", ["trainer=cpu", "task.epochs=2"] + TINY, tmp_path)
    score = train(cfg)
    out = capsys.readouterr().out
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and len(ckpts) == 2 and not any("=" in name for name in ckpts)
    best = next(p for p in (tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert f"best checkpoint: {best}" in out and "test/exact_match=" in out
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").is_file()
    resolved = (tmp_path / "config.yaml").read_text()
    assert "name: task1" in resolved and "${" not in resolved
    assert abs(score - float(best.stem.split("exact")[1])) < 1e-4

    # the checkpoint alone rebuilds the model (weights_only) and predicts exactly as it did
    ckpt = torch.load(best, weights_only=True)
    module = load_module(best)
    assert module.hparams.task == "task1" and module.hparams.alphabet == "0123456789"
    reference = load_module(best)
    images = torch.randint(0, 256, (16, 3, 72, 72), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(module(images), reference(images))
    assert module.predict_step(images, 0) == reference.predict_step(images, 0)
    assert ckpt["hyper_parameters"]["widths"] == [16, 16, 32, 32]


@pytest.mark.slow
def test_accuracy_rises_on_learnable_set(tmp_path):
    """A small network on 3000 rendered digits gets far past chance (10 %) in two epochs."""
    overrides = ["trainer=cpu", "model.widths=[16,32,32,64]", "task.num_train=3000", "data.num_val=300",
                 "task.epochs=2", "task.batch_size=32", "data.num_workers=0", "trainer.enable_progress_bar=false",
                 "test=false"]
    score = train(compose_cfg("train", overrides, tmp_path))
    assert score > 0.6


def test_two_job_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "task=task1,task2", f"hydra.sweep.dir={sweep}", "trainer=cpu",
           "trainer.max_steps=2", "test=false"] + TINY
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for job in ("0", "1"):
        assert (sweep / job / ".hydra" / "config.yaml").is_file()
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
    assert "task=task2" in (sweep / "1" / ".hydra" / "overrides.yaml").read_text()


def test_ddp_with_two_cpu_processes(tmp_path):
    cmd = [sys.executable, "train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", f"hydra.run.dir={tmp_path}", "test=false", "task.num_train=256"] + TINY
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("final metrics:") == 1  # rank zero reports
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4  # 256 images / 32 per batch / 2 processes: each sees half


def test_weight_average_is_what_evaluates_and_survives_the_checkpoint(tmp_path):
    cfg = compose_cfg("train", ["trainer=cpu", "trainer.max_steps=6", "model.ema=0.5", "test=false"] + TINY, tmp_path)
    train(cfg)
    module = load_module(tmp_path / "checkpoints" / "last.ckpt")
    assert int(module.ema_net.n_averaged) == 6  # one update per optimiser step
    assert not any(p.requires_grad for p in module.ema_net.parameters())  # never trained directly
    images = torch.randint(0, 256, (8, 3, 72, 72), dtype=torch.uint8)
    with torch.no_grad():
        x = (images.float() / 255 - 0.5) / 0.5
        assert torch.equal(module(images), module.ema_net.module(x.contiguous(memory_format=torch.channels_last)))
        assert not torch.allclose(module(images), module.net(x))  # the average, not the last weights


@pytest.mark.slow
def test_compiled_training_saves_plain_weights(tmp_path):
    cfg = compose_cfg("train", ["trainer=cpu", "trainer.max_steps=2", "compile=true", "test=false"] + TINY, tmp_path)
    train(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "net.stem.0.weight" in state and not any("_orig_mod" in k for k in state)
    load_module(tmp_path / "checkpoints" / "last.ckpt")  # loads into an uncompiled module
