"""The comforts: console commands, --help, TensorBoard pictures, Optuna search, the Python API."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from captcha_lit import CaptchaReader
from captcha_lit.commands.predict import predict
from captcha_lit.commands.train import train

from tests.helpers import CONF, ROOT, TINY, compose_cfg, make_folder

GROUPS = sorted(p.name for p in Path(CONF).iterdir() if p.is_dir() and p.name != "hydra")
# the export command's arguments (argparse: it takes files, not settings)
EXPORT_HELP = ["usage: captcha-export", "ckpt", "output", "--format {onnx,ddddocr,weights}", "--int8 DIR",
               "a captcha-lit checkpoint (.ckpt)"]


def settings(config: str) -> list[str]:
    """The top-level settings of conf/CONFIG.yaml (Hydra's own aside)."""
    return [k for k in yaml.safe_load((Path(CONF) / f"{config}.yaml").read_text()) if k not in ("defaults", "hydra")]


def assert_describes_groups(text: str) -> None:
    for group in GROUPS:
        assert f"\n{group} " in text, f"--help does not describe {group}"
        options = ", ".join(sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml")))
        assert f"\n{group}: {options}\n" in text, f"--help does not list the options of {group}"


@pytest.mark.parametrize("command", ["captcha-train", "captcha-predict", "captcha-generate", "captcha-export"])
def test_console_commands_answer_help(command):
    exe = shutil.which(command)
    assert exe, f"{command} is not installed: pip install -e ."
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    out = result.stdout
    if command == "captcha-export":
        assert all(part in out for part in EXPORT_HELP), out
        return
    # a Hydra command: its help shows the config it composes, every setting of it
    config = command.removeprefix("captcha-")
    section = out.rsplit("== Config", 1)[1]  # the last heading: the composed config, after the groups
    for key in settings(config):
        assert f"\n{key}:" in section, f"{command} --help does not show {key}"
    if command == "captcha-train":
        assert out.startswith("== captcha-lit ==\n") and "python train.py resume=" in out
        assert_describes_groups(out)
    if command == "captcha-generate":  # the tasks it renders, from the training task configs
        assert all(f"\n  {task}:\n    name: {task}\n" in section for task in ("task1", "task2", "task3"))


def test_train_help_names_every_config_group():
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert_describes_groups(result.stdout)
    defaults = result.stdout.split("== Config (defaults) ==")[1]  # the default experiment's settings, composed
    assert "\n  num_train: 7000\n" in defaults and "\n  max_epochs: 2\n" in defaults


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
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    # data.batch_size is fixed by the command line (TINY), so only the other two are searched
    assert results["name"] == "optuna" and set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay"}
    assert 1e-4 <= results["best_params"]["optimizer.lr"] <= 3e-3
    assert 0 <= results["best_params"]["optimizer.weight_decay"] <= 0.1 and 0 <= results["best_value"] <= 1
    tried = []
    for trial in ("0", "1"):  # each trial trained with the values sampled for it
        overrides = yaml.safe_load((tmp_path / trial / ".hydra" / "overrides.yaml").read_text())
        sampled = dict(o.split("=", 1) for o in overrides if o.startswith("optimizer."))
        lr, wd = float(sampled["optimizer.lr"]), float(sampled["optimizer.weight_decay"])
        saved = yaml.safe_load((tmp_path / trial / "config.yaml").read_text())
        assert (saved["optimizer"]["lr"], saved["optimizer"]["weight_decay"]) == (lr, wd)
        ckpt = torch.load(tmp_path / trial / "checkpoints" / "last.ckpt", weights_only=True)
        group = ckpt["optimizer_states"][0]["param_groups"][0]
        assert ckpt["global_step"] == 2 and group["max_lr"] == lr and group["weight_decay"] == wd  # the one-cycle peak
        tried.append({"optimizer.lr": lr, "optimizer.weight_decay": wd})
    assert tried[0] != tried[1] and results["best_params"] in tried


def test_reader_agrees_with_predict_row_for_row(tmp_path):
    train(compose_cfg("train", TINY + ["task=task2", "trainer=cpu", "trainer.max_steps=3", "test=false"], tmp_path))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    data = make_folder(tmp_path / "val", {"task2": 12})
    out = tmp_path / "sub.csv"
    predict(compose_cfg("predict", [f"ckpt={ckpt}", f"data_dir={data}", f"output={out}", "progress=false"]))
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    # a row for each image, each read as two characters of task2's alphabet
    assert sorted(name for name, _ in rows) == sorted(f"task2/{i:05d}.png" for i in range(12))
    assert all(len(label) == 2 and set(label) <= set("0123456789abcdefghijklmnopqrstuvwxyz") for _, label in rows)
    reader = CaptchaReader.from_checkpoint(ckpt, batch_size=5)
    assert reader.read([data / name for name, _ in rows]) == [label for _, label in rows]
