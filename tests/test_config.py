"""Every option of every config group composes and instantiates."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import CONF, TINY, compose_cfg, make_folder


def options(group):
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["task", "data", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger"])
def test_every_option_composes_and_instantiates(group, tmp_path):
    root = make_folder(tmp_path / "d", {"task1": 10, "task2": 10, "task3": 10})
    assert options(group), f"conf/{group} is empty"
    for option in options(group):
        overrides = [f"{group}={option}", f"data.root={root}"] + TINY
        cfg = compose_cfg("train", overrides, tmp_path / "run")
        assert cfg[group] is not None or option == "none"
        if group == "trainer":
            cfg.trainer.precision = "32-true"
            if option == "gpu":  # composes everywhere; instantiating needs a GPU
                continue
        if group in ("callbacks", "logger"):
            assert all(instantiate(c) is not None for c in cfg[group].values())
        elif group == "optimizer":
            opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
            assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
        elif group == "scheduler":
            if cfg.scheduler:
                opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
                assert instantiate(cfg.scheduler)(opt, total_steps=10) is not None
        elif group == "task":
            assert cfg.task.length == {"task1": 1, "task2": 2, "task3": 4}[cfg.task.name]
        else:
            assert instantiate(cfg[group], **({"_convert_": "all"} if group == "model" else {})) is not None


def test_report_recipes():
    for task, epochs, batch in (("task1", 100, 128), ("task2", 300, 256), ("task3", 300, 256)):
        cfg = compose_cfg("train", [f"task={task}"])
        assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.optimizer.lr) == (epochs, batch, 1e-3)
        assert cfg.optimizer._target_ == "torch.optim.Adam"
    cfg = compose_cfg("train", ["task=task3"])
    assert (cfg.data.width, cfg.data.height, cfg.model.length) == (96, 72, 4)
    assert cfg.model.alphabet == "0123456789abcdefghijklmnopqrstuvwxyz"
    assert compose_cfg("train").model.alphabet == "0123456789"  # the default is task1: digits


def test_checkpoint_names_have_no_equals_sign():
    cfg = compose_cfg("train")
    assert "=" not in cfg.callbacks.model_checkpoint.filename
    assert cfg.callbacks.model_checkpoint.monitor == "val/exact_match"


@pytest.mark.parametrize("name", ["kaggle_task1", "kaggle_task2", "kaggle_task3"])
def test_kaggle_recipes_mix_real_and_rendered_images(name, tmp_path):
    from captcha_lit.train import train
    root = make_folder(tmp_path / "d", {"task1": 20, "task2": 20, "task3": 20})
    cfg = compose_cfg("train", [f"experiment={name}", f"data.root={root}", "trainer=cpu", "trainer.fast_dev_run=true"]
                      + TINY, tmp_path / "run")
    assert cfg.task.name == name[-5:] and cfg.data.source == "mixed"
    data = instantiate(cfg.data)
    data.setup()
    assert len(data.val_set) == 3  # 15 % of the folder's 20 images, never trained on
    assert len(data.train_set) == 17 + round(17 * cfg.data.synthetic_ratio)
    assert data.pin_memory == torch.cuda.is_available()  # pin_memory: null pins only for a GPU
    train(cfg)
