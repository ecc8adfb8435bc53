"""Every option of every config group composes and instantiates."""
import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

from captcha_lit.data.datamodule import CaptchaDataModule
from captcha_lit.errors import CaptchaError
from captcha_lit.model.module import CaptchaModule
from captcha_lit.model.packaged import model_path
from captcha_lit.data.tasks import preset

from tests.helpers import CONF, TINY, compose_cfg, make_folder, module_args


def options(group):
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


def own_settings(group, option) -> dict:
    """What conf/GROUP/OPTION.yaml itself sets (its defaults list aside), interpolations unresolved."""
    node = OmegaConf.to_container(OmegaConf.load(Path(CONF) / group / f"{option}.yaml"), resolve=False) or {}
    node.pop("defaults", None)
    return node


def set_elsewhere(overrides) -> set:
    """Dotted keys that the command line or the default experiment (quickstart) sets over a group's own."""
    quickstart = OmegaConf.to_container(OmegaConf.load(Path(CONF) / "experiment" / "quickstart.yaml"))
    return ({o.split("=", 1)[0] for o in overrides}
            | {f"{g}.{k}" for g, node in quickstart.items() if g != "defaults" for k in node})


def learning_rates(scheduler, optimizer, steps):
    """The learning rate of each of `steps` steps."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("group", ["task", "data", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger"])
def test_every_option_composes_and_instantiates(group, tmp_path):
    root = make_folder(tmp_path / "d", {"task1": 10, "task2": 10, "task3": 10})
    assert options(group), f"conf/{group} is empty"
    for option in options(group):
        folder = group == "data" and option != "synthetic"
        tiny = [o for o in TINY if not o.startswith(f"{group}=")]
        overrides = [f"{group}={option}"] + ([f"data.root={root}"] if folder else []) + tiny
        cfg = compose_cfg("train", overrides, tmp_path / "run")
        # the option chosen is the one composed: its own settings, where nothing else sets them
        # (scheduler=none: an empty group)
        given, composed = own_settings(group, option), OmegaConf.to_container(cfg[group], resolve=False)
        assert bool(composed) == bool(given) == (option != "none"), (group, option)
        kept = [k for k in given if f"{group}.{k}" not in set_elsewhere(overrides)]
        assert {k: composed.get(k) for k in kept} == {k: given[k] for k in kept}, (group, option)
        if group == "trainer":
            cfg.trainer.precision = "32-true"
            if option == "gpu":  # composes everywhere; instantiating needs a GPU
                continue
        if group == "callbacks":
            built = [instantiate(c) for c in cfg.callbacks.values()]
            assert [type(c).__name__ for c in built] == ["ModelCheckpoint", "ModelCheckpoint", "LearningRateMonitor",
                                                         "ValidationImages"]
            assert (built[0].monitor, built[1].monitor) == ("val/exact_match", None)
        elif group == "logger":
            assert [type(instantiate(c)).__name__ for c in cfg.logger.values()] == \
                {"csv": ["CSVLogger"], "tensorboard": ["CSVLogger", "TensorBoardLogger"]}[option]
        elif group == "optimizer":
            opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
            assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
        elif group == "scheduler":
            if cfg.scheduler:
                opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
                scheduler = instantiate(cfg.scheduler)(opt, total_steps=10)
                assert type(scheduler) is {"cosine": LambdaLR, "onecycle": OneCycleLR}[option]
                rates = learning_rates(scheduler, opt, 10)
                # the optimizer's lr is the peak, reached early (within the warm-up), and the run anneals to ~0
                assert max(rates) == pytest.approx(0.1, rel=0.02) and rates.index(max(rates)) <= 2
                assert rates[-1] < 0.005 and rates[3:] == sorted(rates[3:], reverse=True)
        elif group == "task":
            if option == "auto":  # filled from the folder at the start of a run
                assert cfg.task.length is None and cfg.task.alphabet is None
            else:
                assert {**preset(option).config(), "narrow_alphabet": False} == dict(cfg.task)  # off unless a recipe sets it
                # the model reads the task chosen (general's 1 to 8 characters: with a CTC head)
                head = "ctc" if isinstance(preset(option).length, list) else "positions"
                model = instantiate(cfg.model, head=head, _convert_="all")
                assert (model.hparams.task, model.hparams.length, model.hparams.alphabet) == \
                    (option, preset(option).length, preset(option).alphabet)
        elif group == "data":
            data = instantiate(cfg.data)
            assert type(data) is CaptchaDataModule and data.task == preset("task1")
            assert (data.batch_size, data.num_train, data.num_val, data.num_workers) == (32, 256, 64, 0)
            assert data.root == (str(root) if folder else None)
            assert data.synthetic_ratio == {"folder": 0, "mixed": 1.0, "synthetic": 0}[option]
        elif group == "model":
            model = instantiate(cfg.model, _convert_="all")
            assert type(model) is CaptchaModule
            task = preset("task1")
            expected = {"task": "task1", "length": task.length, "alphabet": task.alphabet, "width": task.width,
                        "height": task.height, "head": "positions", "widths": [16, 16, 32, 32]}
            assert {k: model.hparams[k] for k in expected} == expected
            # the network is built as configured: 16 channels in, 32 into the digits' 10-class head
            assert (model.net.stem[0].weight.shape[0], tuple(model.net.heads.weight.shape)) == (16, (10, 32))
            with torch.no_grad():  # one 10-class prediction per character
                assert model(torch.zeros(2, 3, 72, 72, dtype=torch.uint8)).shape == (2, 1, 10)
        elif group == "trainer":
            trainer = instantiate(cfg.trainer)
            assert type(trainer) is pl.Trainer and (trainer.max_epochs, trainer.precision) == (1, "32-true")
            gpu = option != "cpu" and torch.cuda.is_available()  # default and ddp: the GPU when there is one
            assert type(trainer.accelerator) is (CUDAAccelerator if gpu else CPUAccelerator)
            assert trainer.num_devices == (2 if option == "ddp" else 1)
            assert isinstance(trainer.strategy, DDPStrategy if option == "ddp" else SingleDeviceStrategy)
            assert trainer.progress_bar_callback is None  # TINY's enable_progress_bar=false reached it
        else:
            raise AssertionError(f"conf/{group}: no check for this group")


def test_report_recipes():
    for task, epochs, batch in (("task1", 100, 128), ("task2", 300, 256), ("task3", 300, 256)):
        cfg = compose_cfg("train", [f"experiment=report_{task}"])
        assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.optimizer.lr) == (epochs, batch, 1e-3)
        assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.task.name == task
        assert cfg.model.head == "positions" and list(cfg.model.widths) == [36, 72, 144, 288]
    cfg = compose_cfg("train", ["task=task3"])
    assert (cfg.data.task.width, cfg.data.task.height, cfg.model.task.length) == (96, 72, 4)
    assert cfg.model.task.alphabet == "0123456789abcdefghijklmnopqrstuvwxyz"


def test_auto_fine_tunes_the_general_reader_and_auto_scratch_keeps_the_from_scratch_recipe():
    auto = compose_cfg("train", ["experiment=auto", "data.root=DIR"])
    scratch = compose_cfg("train", ["experiment=auto_scratch", "data.root=DIR"])
    general = torch.load(model_path("pretrained:general"), weights_only=True)["hyper_parameters"]
    assert auto.init_from == "pretrained:general" and scratch.init_from is None
    # the general reader's network, so that every weight loads; at least its height and width (wider images keep
    # their aspect ratio): the convolutions read any size, and small glyphs read better taller
    assert (list(auto.model.widths), auto.task.width, auto.task.min_width) == (general["widths"], None, general["width"])
    assert auto.task.height >= general["height"]
    assert list(scratch.model.widths) == [32, 64, 96, 128]
    assert (scratch.task.width, scratch.task.height, scratch.task.min_width) == (None, None, None)
    assert scratch.trainer.max_epochs > auto.trainer.max_epochs and scratch.optimizer.lr == 2e-3
    for cfg in (auto, scratch):
        assert cfg.task.name == "auto" and cfg.model.head == "ctc" and cfg.callbacks.model_checkpoint is None


def test_the_default_is_the_quickstart_experiment_for_any_task():
    cfg = compose_cfg("train")
    assert cfg.task.name == "task1" and cfg.model.task.alphabet == "0123456789"  # the default is task1: digits
    assert (cfg.trainer.max_epochs, cfg.data.num_train, cfg.data.batch_size, cfg.model.low_res) == (2, 7000, 64, 0.5)
    assert cfg.scheduler._target_.endswith("one_cycle")
    cfg = compose_cfg("train", ["task=task3"])
    assert cfg.task.name == "task3" and cfg.trainer.max_epochs == 2  # the quickstart budget, task3's task
    assert not any(k in cfg.task for k in ("epochs", "batch_size", "num_train"))  # no training knobs in a task


def test_checkpoint_names_have_no_equals_sign():
    cfg = compose_cfg("train")
    assert "=" not in cfg.callbacks.model_checkpoint.filename
    assert cfg.callbacks.model_checkpoint.monitor == "val/exact_match"


@pytest.mark.parametrize("name", ["kaggle_task1", "kaggle_task2", "kaggle_task3"])
def test_kaggle_recipes_mix_real_and_rendered_images(name, tmp_path, capsys, caplog):
    from captcha_lit.commands.train import train
    root = make_folder(tmp_path / "d", {"task1": 20, "task2": 20, "task3": 20})
    # init_from=null: the packaged reader (test_train.py) does not fit TINY's widths
    cfg = compose_cfg("train", [f"experiment={name}", f"data.root={root}", "trainer=cpu", "trainer.fast_dev_run=true",
                                "init_from=null"] + TINY, tmp_path / "run")
    assert cfg.task.name == name[-5:] and cfg.data.root == str(root)
    data = instantiate(cfg.data)
    data.setup()
    # three splits: 15 % each of the folder's 20 images validate and test, never trained on
    assert (len(data.val_set), len(data.test_set)) == (3, 3) and data.test_set is not data.val_set
    assert len(data.train_set) == 14 + round(14 * cfg.data.synthetic_ratio)
    assert data.pin_memory == torch.cuda.is_available()  # pin_memory: null pins only for a GPU
    caplog.set_level(logging.INFO)
    capsys.readouterr()
    score = train(cfg)
    # the run trained on the recipe's mix: 14 real images and 2 rendered ones per real one
    assert f"{name[-5:]}: 14 real + 28 rendered training images (42 an epoch), 3 validation, 3 test" in caplog.text
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("final metrics: "))
    metrics = {k: float(v) for k, v in (item.split("=") for item in line.removeprefix("final metrics: ").split(", "))}
    assert metrics["train/loss"] > 0 and metrics["val/loss"] > 0 and 0 <= metrics["val/exact_match"] <= 1
    assert score == pytest.approx(metrics["val/exact_match"], abs=1e-4)  # what a sweeper would optimise
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")  # the recipe's settings, as the run used them
    assert (saved.task.name, saved.data.root, saved.data.synthetic_ratio, saved.data.style) == \
        (name[-5:], str(root), 2, "kaggle")
    assert (saved.optimizer._target_, saved.optimizer.lr, saved.model.label_smoothing, saved.init_from) == \
        ("torch.optim.AdamW", 1e-4, 0.1, None)
    # task2 and task3 read only the characters of their labels (all 20 rows)
    assert saved.task.narrow_alphabet == (name != "kaggle_task1")
    assert (len(saved.task.alphabet) < len(preset(name[-5:]).alphabet)) == (name != "kaggle_task1")


def test_finetune_needs_a_checkpoint_and_starts_from_all_of_it(tmp_path, capsys):
    from captcha_lit.commands.train import train
    root = make_folder(tmp_path / "d", {"task2": 20})
    base = ["experiment=finetune", "task=task2", f"data.root={root}", "trainer=cpu"]
    cfg = compose_cfg("train", base)
    assert (cfg.trainer.max_epochs, cfg.data.synthetic_ratio, cfg.model.label_smoothing) == (1, 2, 0.1)
    with pytest.raises(CaptchaError, match="init_from=CKPT: no such file; give the path of a trained checkpoint"):
        train(compose_cfg("train", base + TINY, tmp_path / "run"))
    pretrained = CaptchaModule(**module_args("task2"), widths=[16, 16, 32, 32])
    path = tmp_path / "pre.ckpt"
    torch.save({"hyper_parameters": dict(pretrained.hparams), "state_dict": pretrained.state_dict()}, path)
    train(compose_cfg("train", base + TINY + [f"init_from={path}", "trainer.fast_dev_run=true"], tmp_path / "run2"))
    n = len(pretrained.state_dict())
    assert f"init_from={path}: {n} of {n} weights loaded\n" in capsys.readouterr().out  # the same task: nothing fresh
