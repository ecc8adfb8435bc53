import csv
import logging
import re
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image

from captcha_lit.model.checkpoint import load_module
from captcha_lit.model.packaged import pretrained
from captcha_lit.errors import CaptchaError
from captcha_lit.commands.cli import export as export_main
from captcha_lit.model.module import CaptchaModule
from captcha_lit.reading.reader import CaptchaReader
from captcha_lit.data.render import Renderer
from captcha_lit.data.seeded import sample_rng
from captcha_lit.data.datasets import split
from captcha_lit.data.tasks import preset
from captcha_lit.commands.train import train
from captcha_lit.model.warm_start import start_from

from tests.helpers import ROOT, TINY, compose_cfg, make_folder, make_named_folder, module_args, write_csv


@pytest.mark.parametrize("task", ["task1", "task2", "task3"])
def test_fast_dev_run_each_task(task, tmp_path, capsys):
    cfg = compose_cfg("train", [f"task={task}", "trainer=cpu", "trainer.fast_dev_run=true"] + TINY, tmp_path)
    score = train(cfg)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("final metrics:"))
    metrics = dict(item.split("=") for item in line.removeprefix("final metrics: ").split(", "))
    assert float(metrics["train/loss"]) > 0 and float(metrics["val/loss"]) > 0  # one batch of each ran
    assert score == pytest.approx(float(metrics["val/exact_match"]), abs=1e-4)  # the last validation


def test_training_checkpoints_and_round_trip(tmp_path, capsys):
    cfg = compose_cfg("train", TINY + ["trainer=cpu", "trainer.max_epochs=2"], tmp_path)  # after TINY's max_epochs=1
    score = train(cfg)
    out = capsys.readouterr().out
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and len(ckpts) == 2 and not any("=" in name for name in ckpts)
    best = next(p for p in (tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert f"best checkpoint: {best}" in out and "test/exact_match=" in out
    resolved = (tmp_path / "config.yaml").read_text()
    assert "name: task1" in resolved and "${" not in resolved
    saved = OmegaConf.load(tmp_path / "config.yaml")  # the settings given, as the run used them
    assert (saved.trainer.max_epochs, saved.trainer.accelerator, saved.data.num_train, saved.data.batch_size) == \
        (2, "cpu", 256, 32)
    assert list(saved.model.widths) == [16, 16, 32, 32] and saved.callbacks.model_checkpoint.dirpath == \
        f"{tmp_path}/checkpoints"
    assert abs(score - float(best.stem.split("exact")[1])) < 1e-4

    # metrics.csv: train, validation and test metrics, rates in [0, 1]; one validation per epoch,
    # and the best checkpoint is the epoch that validated best
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    assert {f"{split}/{m}" for split in ("train", "val", "test") for m in ("loss", "exact_match", "char_acc")} \
        <= set(rows[0]) and {"epoch", "step"} <= set(rows[0])
    rates = [float(r[k]) for r in rows for k in r if k.endswith(("/exact_match", "/char_acc")) and r[k]]
    assert len(rates) >= 10 and all(0 <= v <= 1 for v in rates)
    # task1 reads one character: a character read right is the label read right
    assert all(r[f"{split}/char_acc"] == r[f"{split}/exact_match"] for r in rows for split in ("train", "val", "test"))
    assert all(float(r[k]) > 0 for r in rows for k in r if k.endswith("/loss") and r[k])
    val = {int(r["epoch"]): float(r["val/exact_match"]) for r in rows if r["val/exact_match"]}
    assert sorted(val) == [0, 1] and score == pytest.approx(max(val.values()), abs=1e-4)
    assert val[int(best.stem.split("epoch")[1][:3])] == max(val.values())
    tested = [float(r["test/exact_match"]) for r in rows if r["test/exact_match"]]
    assert len(tested) == 1 and f"test/exact_match={tested[0]:.4f}" in out

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
    task = preset("task1")
    assert {k: ckpt["hyper_parameters"][k] for k in ("task", "length", "alphabet", "width", "height", "head")} == \
        {"task": "task1", "length": task.length, "alphabet": task.alphabet, "width": task.width, "height": task.height,
         "head": "positions"}
    assert ckpt["epoch"] == int(best.stem.split("epoch")[1][:3])  # the epoch its name says
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 16)  # 256 images / 32 a batch, twice


@pytest.mark.slow
def test_accuracy_rises_on_learnable_set(tmp_path):
    """A small network on 3000 rendered digits gets far past chance (10 %) in two epochs."""
    overrides = ["trainer=cpu", "model.widths=[16,32,32,64]", "data.num_train=3000", "data.num_val=300",
                 "trainer.max_epochs=2", "data.batch_size=32", "data.num_workers=0", "trainer.enable_progress_bar=false",
                 "test=false"]
    score = train(compose_cfg("train", overrides, tmp_path))
    assert score > 0.6


def test_two_job_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "task=task1,task2", f"hydra.sweep.dir={sweep}", "trainer=cpu",
           "trainer.max_steps=2", "test=false"] + TINY
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for job, task in (("0", "task1"), ("1", "task2")):  # each job trained its own task, in its own folder
        composed = OmegaConf.load(sweep / job / ".hydra" / "config.yaml")
        assert composed.task.name == task and list(composed.model.widths) == [16, 16, 32, 32]
        assert OmegaConf.load(sweep / job / "config.yaml").output_dir == str(sweep / job)
        ckpt = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        hp = ckpt["hyper_parameters"]
        assert (hp["task"], hp["length"], hp["alphabet"]) == (task, preset(task).length, preset(task).alphabet)
        assert ckpt["global_step"] == 2  # trainer.max_steps=2
    assert "task=task2" in (sweep / "1" / ".hydra" / "overrides.yaml").read_text()


def test_ddp_with_two_cpu_processes(tmp_path):
    cmd = [sys.executable, "train.py", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.precision=32-true", f"hydra.run.dir={tmp_path}", "test=false", "data.num_train=256"] + TINY
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("final metrics:") == 1  # rank zero reports
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4  # 256 images / 32 per batch / 2 processes: each sees half
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    logged = [r for r in rows if r.get("train/loss")]  # summed over both processes at the epoch's end
    assert len(logged) == 1 and float(logged[0]["train/loss"]) > 0 and 0 <= float(logged[0]["train/exact_match"]) <= 1


def test_weight_average_is_what_evaluates_and_survives_the_checkpoint(tmp_path):
    cfg = compose_cfg("train", ["trainer=cpu", "trainer.max_steps=6", "model.ema=0.999", "test=false"] + TINY, tmp_path)
    train(cfg)
    module = load_module(tmp_path / "checkpoints" / "last.ckpt")
    assert not any(p.requires_grad for p in module.ema_net.parameters())  # never trained directly
    images = torch.randint(0, 256, (8, 3, 72, 72), dtype=torch.uint8)
    with torch.no_grad():
        x = ((images.float() / 255 - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
        assert torch.equal(module(images), module.ema_net(x))
        assert not torch.allclose(module(images), module.net(x))  # the average, not the last weights


def test_weight_average_moves_once_per_optimizer_step_when_gradients_accumulate(tmp_path, monkeypatch):
    steps = []
    monkeypatch.setattr(CaptchaModule, "update_ema", lambda self, step: steps.append(step))
    cfg = compose_cfg("train", ["trainer=cpu", "trainer.max_steps=3", "+trainer.accumulate_grad_batches=2",
                                "model.ema=0.999", "test=false"] + TINY, tmp_path)
    train(cfg)
    assert steps == [0, 1, 2]  # 6 batches, 3 steps


def test_weight_average_warms_up_from_the_current_weights():
    module = CaptchaModule(**module_args("task1"), ema=0.999)
    start = module.ema_net.stem[0].weight.clone()
    with torch.no_grad():
        module.net.stem[0].weight.add_(1.0)
    module.update_ema(0)  # decay (1 + 0) / (10 + 0) = 0.1: mostly the current weights
    assert torch.allclose(module.ema_net.stem[0].weight, 0.1 * start + 0.9 * (start + 1), atol=1e-6)
    module.update_ema(10**6)  # late in training the decay is the configured 0.999
    before = module.ema_net.stem[0].weight.clone()
    module.update_ema(10**6)
    assert torch.allclose(module.ema_net.stem[0].weight, before + 0.001 * (start + 1 - before), atol=1e-6)


@pytest.mark.slow
def test_compiled_training_saves_plain_weights(tmp_path):
    cfg = compose_cfg("train", ["trainer=cpu", "trainer.max_steps=2", "compile=true", "test=false"] + TINY, tmp_path)
    train(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "net.stem.0.weight" in state and not any("_orig_mod" in k for k in state)
    load_module(tmp_path / "checkpoints" / "last.ckpt")  # loads into an uncompiled module


def test_auto_task_is_inferred_printed_and_recorded(tmp_path, capsys):
    data = make_named_folder(tmp_path / "my-captchas", 30, [3, 5], "0123456789ABCxyz", 120, 40)
    cfg = compose_cfg("train", ["experiment=auto_scratch", f"data.root={data}", "trainer=cpu", "trainer.max_steps=2",
                                "test=false"] + TINY, tmp_path / "run")
    train(cfg)
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("task=auto:"))
    hp = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    alphabet = "".join(sorted(set("".join(p.name.split(".")[0].split("_")[0] for p in data.glob("*.png")))))
    assert line.startswith(f"task=auto: my-captchas: 3-5 characters of {alphabet!r}") and "120x40" in line
    assert "from 30 labelled images (label-named layout)" in line
    assert (hp["task"], hp["length"], hp["alphabet"], hp["width"], hp["height"], hp["head"]) == \
        ("my-captchas", [3, 5], alphabet, 120, 40, "ctc")
    # the recipe keeps the last (annealed) model, not one picked on a few dozen validation images
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt")] == ["last.ckpt"]
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.task == {"name": "my-captchas", "length": [3, 5], "alphabet": alphabet, "width": 120, "height": 40,
                          "lowercase": False}


def test_auto_task_on_square_images_trains(tmp_path, capsys):
    # 100x100 images of 5 characters would fit 160x48 as 48x48: 6 CTC columns, too few for 5 characters
    data = make_named_folder(tmp_path / "square", 20, 5, "0123456789", 100, 100)
    cfg = compose_cfg("train", ["experiment=auto_scratch", f"data.root={data}", "trainer=cpu", "trainer.max_steps=1",
                                "test=false"] + TINY, tmp_path / "run")
    train(cfg)
    assert "images of 100x100 scaled to 80x48" in capsys.readouterr().out


@pytest.mark.slow
def test_ctc_accuracy_rises_on_variable_length_captchas(tmp_path):
    """A small CTC network on rendered 2-3 digit captchas gets far past chance in three epochs."""
    overrides = ["trainer=cpu", "task.name=short", "task.length=[2,3]", "task.width=64", "task.height=32",
                 "model.head=ctc", "model.widths=[16,32,32,64]", "data.num_train=3000", "data.num_val=300",
                 "trainer.max_epochs=3", "data.batch_size=32", "data.num_workers=0", "trainer.enable_progress_bar=false",
                 "test=false", "optimizer.lr=2e-3"]
    score = train(compose_cfg("train", overrides, tmp_path))
    assert score > 0.5


def test_final_training_uses_every_image_but_the_test_split_and_keeps_the_last_checkpoint(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    data = make_named_folder(tmp_path / "mine", 60, length=4, alphabet="0123456789", width=96, height=40)
    overrides = TINY + ["task=auto", "data=folder", f"data.root={data}", "data.test_fraction=0.25", "final=true",
                        "trainer=cpu", "trainer.max_epochs=2", "model.strides=[1,2,2,[2,1]]", "model.head=ctc"]
    score = train(compose_cfg("train", overrides, tmp_path / "run"))
    out = capsys.readouterr().out
    assert caplog.text.count("45 real + 0 rendered training images (45 an epoch), 0 validation, 15 test") == 1  # test
    # reuses fit's splits: the images are read once
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.data.val_fraction == 0 and saved.callbacks.model_checkpoint is None
    metrics = dict(item.split("=") for item in out.split("final metrics: ")[1].splitlines()[0].split(", "))
    assert "val/exact_match" not in metrics and score == pytest.approx(float(metrics["test/exact_match"]), abs=1e-4)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_init_from_loads_the_fitting_weights_and_starts_other_heads_fresh(tmp_path, capsys):
    """Fine-tuning: a task1 checkpoint starts a task2 run; the backbone is the checkpoint's, the two
    36-class heads (the checkpoint has one 10-class head) start fresh, and the run says so."""
    pretrained = CaptchaModule(**module_args("task1"), widths=[16, 16, 32, 32])
    path = tmp_path / "pre.ckpt"
    torch.save({"hyper_parameters": dict(pretrained.hparams), "state_dict": pretrained.state_dict()}, path)
    run = tmp_path / "run"
    cfg = compose_cfg("train", ["task=task2", "trainer=cpu", f"init_from={path}", "test=false", "scheduler=none"] + TINY,
                      run)
    seen = {}

    class Peek(pl.Callback):  # the weights as training starts
        def on_fit_start(self, trainer, module):
            seen.update({k: v.clone() for k, v in module.state_dict().items()})

    score = train(cfg, callbacks=[Peek()])
    loaded = [k for k in seen if k in pretrained.state_dict() and seen[k].shape == pretrained.state_dict()[k].shape]
    assert "net.stem.0.weight" in loaded and all(torch.equal(seen[k], pretrained.state_dict()[k]) for k in loaded)
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("init_from="))
    assert f"{len(loaded)} of {len(seen)} weights loaded" in line and "starting fresh: net.heads" in line
    # the start is scored on the validation split before training, beside the model kept
    scores = re.search(rf"validation exact match: (\d\.\d{{4}}) before training \(init_from={re.escape(str(path))}\), "
                       rf"(\d\.\d{{4}}) after", out)
    assert scores and abs(float(scores.group(2)) - score) < 1e-4

    path.unlink()  # a resumed run continues from its own last.ckpt and no longer needs the file
    train(compose_cfg("train", [f"resume={run}", "trainer.max_epochs=2"]), overrides=["trainer.max_epochs=2"])
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1

    other = CaptchaModule(**module_args("task2"), widths=[24, 24, 48, 48])  # wider than TINY's: weights widen, never narrow
    torch.save({"hyper_parameters": dict(other.hparams), "state_dict": other.state_dict()}, path)
    with pytest.raises(CaptchaError, match=r"init_from=.*none of its weights fit this model \(init_from=null trains from scratch\): it has "
                                           r"widths=\[24, 24, 48, 48\]"):
        train(compose_cfg("train", ["trainer=cpu", f"init_from={path}"] + TINY, tmp_path / "run2"))


def test_init_from_starts_from_the_weight_average_the_checkpoint_predicts_with(tmp_path):
    pretrained = CaptchaModule(**module_args("task1"), widths=[16, 16, 32, 32], ema=0.9)
    with torch.no_grad():
        for w in pretrained.ema_net.parameters():
            w.add_(1.0)  # the average differs from the trained copy
    path = tmp_path / "pre.ckpt"
    torch.save({"hyper_parameters": dict(pretrained.hparams), "state_dict": pretrained.state_dict()}, path)
    for ema in (0.0, 0.9):
        run = CaptchaModule(**module_args("task1"), widths=[16, 16, 32, 32], ema=ema)
        start_from(run, path)
        copies = [run.net] + ([run.ema_net] if ema else [])
        for name, w in pretrained.ema_net.state_dict().items():
            assert all(torch.equal(net.state_dict()[name], w) for net in copies), name


@pytest.mark.parametrize("name", ["task1", "task2", "task3"])
def test_packaged_readers_read_captchas_of_their_task(name):
    """The readers init_from=pretrained starts from (fp16 files in the package) read the rendered
    competition-style images they were pretrained on; a broken, truncated or mismatched file
    would read next to none."""
    path = pretrained(name)
    task = preset(name)
    reader = CaptchaReader.from_checkpoint(path, device="cpu", precision="32")
    assert (reader.spec.task, reader.spec.alphabet, reader.spec.width, reader.spec.height) == \
        (name, task.alphabet, task.width, task.height)
    renderer = Renderer(task.width, task.height, task.length, task.alphabet, style="kaggle")
    images, labels = zip(*(renderer.render(sample_rng(1, "packaged", i)) for i in range(40)))
    assert sum(a == b for a, b in zip(reader.read(list(images)), labels)) >= 36


def test_init_from_pretrained_starts_a_recipe_from_the_packaged_reader(tmp_path, capsys):
    root = make_folder(tmp_path / "d", {"task3": 20})
    full_width = [o for o in TINY if not o.startswith("model.widths")]  # the packaged reader's widths
    cfg = compose_cfg("train", ["experiment=kaggle_task3", f"data.root={root}", "trainer=cpu",
                                "trainer.fast_dev_run=true"] + full_width, tmp_path / "run")
    assert cfg.init_from == "pretrained"
    train(cfg)
    n = len(CaptchaModule(**module_args("task3")).state_dict())
    alphabet = OmegaConf.load(tmp_path / "run" / "config.yaml").task.alphabet  # narrowed to the labels' characters
    assert f"init_from={pretrained('task3')}: {n} of {n} weights loaded; per-position head: {len(alphabet)} characters " \
           f"kept\n" in capsys.readouterr().out
    with pytest.raises(CaptchaError, match=r"pretrained:mine: captcha-lit ships pretrained readers for (general, )?task1, "
                                           r"task2, task3, not .mine.; give a checkpoint"):
        pretrained("mine")


def test_init_from_maps_per_position_heads_of_another_alphabet_by_character(tmp_path, capsys):
    """Heads of the same shape that name the same characters in another order would load by shape
    alone and read every character as another one: each row goes to its own character, at each
    position; a character the checkpoint never read starts fresh; another length starts fresh."""
    args = module_args("task2")
    old = args["task"]["alphabet"]
    pretrained_module = CaptchaModule(**args, widths=[16, 16, 32, 32])
    path = tmp_path / "pre.ckpt"
    torch.save({"hyper_parameters": dict(pretrained_module.hparams), "state_dict": pretrained_module.state_dict()}, path)
    new = "z9" + "0123456" + "X"  # reordered, narrowed, and one character it never read
    run = CaptchaModule(task={**args["task"], "alphabet": new}, widths=[16, 16, 32, 32])
    fresh = run.net.heads.weight.detach().clone()
    start_from(run, path)
    assert "per-position head: 9 characters kept, 'X' fresh" in capsys.readouterr().out
    theirs, ours = pretrained_module.net.heads, run.net.heads
    for p in range(2):
        for i, c in enumerate(new):
            row = p * len(new) + i
            if c == "X":
                assert torch.equal(ours.weight[row], fresh[row])
            else:
                assert torch.equal(ours.weight[row], theirs.weight[p * len(old) + old.index(c)])
                assert torch.equal(ours.bias[row], theirs.bias[p * len(old) + old.index(c)])
    assert torch.equal(run.net.stem[0].weight, pretrained_module.net.stem[0].weight)
    longer = CaptchaModule(task={**args["task"], "length": 3}, widths=[16, 16, 32, 32])
    start_from(longer, path)
    assert "starting fresh: net.heads" in capsys.readouterr().out


def test_narrow_alphabet_reads_only_the_characters_of_the_labels(tmp_path, capsys, caplog):
    """task.narrow_alphabet=true: the checkpoint reads the characters the folder's labels use (in
    the task's order), every image is kept in its split (a label with a character only the test
    split has still counts), and a start of the full alphabet (the packaged task2 reader) keeps
    their rows."""
    root = tmp_path / "d"
    (root / "task2").mkdir(parents=True)
    rows = []
    for i in range(40):  # 0-5, and 'zz' in the first fold's test slice only
        label = "zz" if i == 0 else f"{i % 6}{(i // 6) % 6}"
        Image.new("RGB", (72, 72), (i * 5, 100, 200)).save(root / "task2" / f"{i:03d}.png")
        rows.append((f"task2/{i:03d}.png", label))
    write_csv(root, rows)
    fold = next(k for k in range(5) if 0 in split(40, 0.15, 0, 0.2, k)[2])  # the fold that tests image 0
    full_width = [o for o in TINY if not o.startswith("model.widths")]  # the packaged reader's widths
    cfg = compose_cfg("train", ["task=task2", "data=folder", f"data.root={root}", "task.narrow_alphabet=true",
                                "data.test_fraction=0.2", f"data.fold={fold}", "init_from=pretrained", "trainer=cpu"]
                      + full_width, tmp_path / "run")
    caplog.set_level(logging.INFO)
    train(cfg)
    out = capsys.readouterr().out
    assert "task.narrow_alphabet=true: task2 reads the 7 characters its 40 labels use, not " \
           "'6789abcdefghijklmnopqrstuvwxy'" in out
    assert "per-position head: 7 characters kept" in out
    assert "task2: 26 real + 0 rendered training images (26 an epoch), 6 validation, 8 test" in caplog.text
    hparams = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["alphabet"] == "012345z"
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").task.alphabet == "012345z"
    # without it, the same run reads all 36
    train(compose_cfg("train", ["task=task2", "data=folder", f"data.root={root}", "trainer=cpu",
                                "trainer.fast_dev_run=true"] + TINY, tmp_path / "run2"))
    assert "task.narrow_alphabet" not in capsys.readouterr().out


def test_init_from_refuses_another_input_scaling_and_starts_another_head_kind_fresh(tmp_path, capsys):
    args = module_args("task3")
    pre = CaptchaModule(**args, widths=[16, 16, 32, 32])
    path = tmp_path / "pre.ckpt"
    torch.save({"hyper_parameters": dict(pre.hparams), "state_dict": pre.state_dict()}, path)
    with pytest.raises(CaptchaError, match=r"trained with model.mean=\[0.5, 0.5, 0.5\], this run sets \[0.0, 0.0, 0.0\]"):
        start_from(CaptchaModule(**args, widths=[16, 16, 32, 32], mean=[0.0, 0.0, 0.0]), path)
    # same-shaped heads of the other kind: per-position classes are not CTC steps
    torch.save({"hyper_parameters": {**dict(pre.hparams), "head": "ctc"}, "state_dict": pre.state_dict()}, path)
    start_from(CaptchaModule(**args, widths=[16, 16, 32, 32]), path)
    assert "starting fresh: net.heads" in capsys.readouterr().out


def test_weights_export_is_an_fp16_start_for_init_from(tmp_path, capsys):
    module = CaptchaModule(**module_args("task1"), widths=[16, 16, 32, 32])
    ckpt = tmp_path / "run.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(), "epoch": 3,
                "optimizer_states": [{"state": {}}]}, ckpt)
    export_main([str(ckpt), str(tmp_path / "start.ckpt"), "--format", "weights"])
    saved = torch.load(tmp_path / "start.ckpt", weights_only=True)
    assert set(saved) == {"hyper_parameters", "state_dict"} and saved["hyper_parameters"] == dict(module.hparams)
    assert all(v.dtype == torch.float16 for v in saved["state_dict"].values() if v.is_floating_point())
    run = CaptchaModule(**module_args("task1"), widths=[16, 16, 32, 32])
    start_from(run, tmp_path / "start.ckpt")
    assert all(torch.equal(run.state_dict()[k], v.half().float()) for k, v in module.state_dict().items()
               if v.is_floating_point())
    with pytest.raises(SystemExit):  # refused before anything is written: the checkpoint itself
        export_main([str(ckpt), str(ckpt), "--format", "weights"])
    assert "that is the checkpoint being exported" in capsys.readouterr().err
    assert torch.load(ckpt, weights_only=True)["epoch"] == 3


def test_a_final_run_without_a_test_split_ends_with_its_metrics_and_last_checkpoint(tmp_path, capsys, caplog):
    # the README's submission command: every labelled image trains, nothing is left to test on
    caplog.set_level(logging.INFO)
    data = make_folder(tmp_path / "data", {"task1": 48})
    cfg = compose_cfg("train", ["trainer=cpu", "data=folder", f"data.root={data}", "final=true",
                                "data.test_fraction=0"] + TINY, tmp_path / "run")
    score = train(cfg)
    out = capsys.readouterr().out
    assert "final metrics: " in out and "train/loss=" in out and "test/" not in out
    assert "task1: 48 real + 0 rendered training images (48 an epoch), 0 validation, no separate test" in caplog.text
    metrics = dict(item.split("=") for item in out.split("final metrics: ")[1].splitlines()[0].split(", "))
    assert float(metrics["train/loss"]) > 0 and 0 <= float(metrics["train/exact_match"]) <= 1
    assert "val/exact_match" not in metrics and score == 0.0  # nothing held out to score on
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, 2)  # one epoch of 48 images in batches of 32
    assert (ckpt["hyper_parameters"]["task"], ckpt["hyper_parameters"]["widths"]) == ("task1", [16, 16, 32, 32])
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert (saved.final, saved.data.val_fraction, saved.data.test_fraction, saved.data.root) == (True, 0, 0, str(data))


def test_an_interrupted_final_run_resumes(tmp_path):
    # its config.yaml holds data.val_fraction=0, which only final=true may use
    data = make_folder(tmp_path / "data", {"task1": 48})
    run = tmp_path / "run"
    overrides = ["trainer=cpu", "data=folder", f"data.root={data}", "final=true", "scheduler=none"] + TINY
    train(compose_cfg("train", overrides, run))
    train(compose_cfg("train", [f"resume={run}", "trainer.max_epochs=2"]), [f"resume={run}", "trainer.max_epochs=2"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 4)  # the second epoch ran on from the first


@pytest.mark.parametrize("head, steps, read", [
    ("positions", [1, 0, 1], "bab"),        # one class per character
    ("ctc", [1, 1, 0, 1, 2, 2, 0], "aab"),  # class 0 is CTC's blank: repeats merge unless a blank parts them
])
def test_validation_image_captions_read_as_the_model_does(head, steps, read):
    from types import SimpleNamespace

    from captcha_lit.model.callbacks import captions

    class Fixed(torch.nn.Module):  # a model whose logits pick `steps`
        spec = SimpleNamespace(head=head, alphabet="ab")

        def forward(self, images):
            return torch.nn.functional.one_hot(torch.tensor([steps]), 3).float()

    assert captions(Fixed(), torch.zeros(1, 3, 16, 32), torch.tensor([[0, 1, -1]])) == [(read, "ab")]


def test_a_fine_tune_that_reads_less_than_its_start_says_so(tmp_path, capsys):
    """The packaged task1 reader reads rendered images of its style; a learning rate far too high
    wrecks it, and the run's last lines say the start read more and name it."""
    full_width = [o for o in TINY if not o.startswith("model.widths")]  # the packaged reader's widths
    cfg = compose_cfg("train", ["task=task1", "init_from=pretrained", "data.style=kaggle", "optimizer.lr=30",
                                "trainer=cpu", "test=false", "data.num_train=64", "data.num_val=32"] + full_width, tmp_path)
    train(cfg)
    scores = re.search(r"validation exact match: (\d\.\d{4}) before training \(init_from=pretrained\), (\d\.\d{4}) after: "
                       r"the start read more of these images; label more of them, or read with the start itself "
                       r"\(ckpt=pretrained:task1\)", capsys.readouterr().out)
    assert scores and float(scores.group(1)) >= 0.8 > float(scores.group(2))
