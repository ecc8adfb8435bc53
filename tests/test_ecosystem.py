"""The comforts: console commands, --help, TensorBoard pictures, Optuna search, the Python API."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captcha_lit import CaptchaReader
from captcha_lit.predict import predict
from captcha_lit.train import train

from tests.helpers import CONF, ROOT, TINY, compose_cfg, make_folder

GROUPS = sorted(p.name for p in Path(CONF).iterdir() if p.is_dir() and p.name != "hydra")


@pytest.mark.parametrize("command", ["captcha-train", "captcha-predict", "captcha-generate", "captcha-export"])
def test_console_commands_answer_help(command):
    exe = shutil.which(command)
    assert exe, f"{command} is not installed: pip install -e ."
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.strip()


def test_train_help_names_every_config_group():
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for group in GROUPS:
        assert f"\n{group} " in result.stdout, f"--help does not describe {group}"


def test_tensorboard_logs_images_and_hyperparameters(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train(compose_cfg("train", TINY + ["trainer=cpu", "logger=tensorboard", "test=false"], tmp_path))
    events = EventAccumulator(str(tmp_path / "tensorboard" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    assert "val/predictions" in events.Tags()["images"]
    assert "val/exact_match" in events.Tags()["scalars"]
    assert (tmp_path / "tensorboard" / "version_0" / "hparams.yaml").read_text().count("alphabet") == 1


def test_optuna_search_composes_and_runs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cmd = [sys.executable, "train.py", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
           "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={tmp_path}", "trainer=cpu",
           "trainer.max_steps=2", "test=false"] + TINY
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = (tmp_path / "optimization_results.yaml").read_text()
    assert "optimizer.lr" in results and "best_value" in results
    assert (tmp_path / "1" / "checkpoints" / "last.ckpt").is_file()


def test_reader_agrees_with_predict_row_for_row(tmp_path):
    train(compose_cfg("train", TINY + ["task=task2", "trainer=cpu", "trainer.max_steps=3", "test=false"], tmp_path))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    data = make_folder(tmp_path / "val", {"task2": 12})
    out = tmp_path / "sub.csv"
    predict(compose_cfg("predict", [f"ckpt={ckpt}", f"data_dir={data}", f"output={out}", "progress=false"]))
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    reader = CaptchaReader.from_checkpoint(ckpt, batch_size=5)
    assert reader.read([data / name for name, _ in rows]) == [label for _, label in rows]
