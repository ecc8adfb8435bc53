import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from captcha_lit import CaptchaReader
from captcha_lit.errors import CaptchaError
from captcha_lit.export import export_onnx
from captcha_lit.predict import predict
from captcha_lit.train import train

from conftest import ROOT, TINY, compose_cfg, make_folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """One briefly trained checkpoint per task (tiny network: predictions are poor but real)."""
    out = {}
    for task in ("task1", "task2", "task3"):
        run = tmp_path_factory.mktemp(task)
        train(compose_cfg("train", [f"task={task}", "trainer=cpu", "trainer.max_steps=3", "test=false"] + TINY, run))
        out[task] = str(run / "checkpoints" / "last.ckpt")
    return out


def run_predict(tmp_path, ckpt, data_dir, **extra):
    overrides = [f"ckpt={ckpt}", f"data_dir={data_dir}", f"output={tmp_path / 'submission.csv'}", "progress=false",
                 "num_workers=0"] + [f"{k}={v}" for k, v in extra.items()]
    return predict(compose_cfg("predict", overrides))


def read_rows(path):
    return list(csv.reader(open(path)))


def test_submission_format(tmp_path, ckpts):
    data = make_folder(tmp_path / "test", {"task1": 9, "task2": 7, "task3": 5})
    rows = read_rows(data / "annotations.csv")
    rng = np.random.default_rng(0)
    order = [rows[0]] + [rows[1:][i] for i in rng.permutation(len(rows) - 1)]  # tasks interleaved
    (data / "annotations.csv").unlink()
    with open(data / "sample_submission.csv", "w", newline="") as f:
        csv.writer(f).writerows([["filename", "label"]] + [[name, "0"] for name, _ in order[1:]])
    run_predict(tmp_path, f"[{ckpts['task3']},{ckpts['task1']},{ckpts['task2']}]", data)
    out = read_rows(tmp_path / "submission.csv")
    assert out[0] == ["filename", "label"]
    assert [r[0] for r in out[1:]] == [r[0] for r in order[1:]]  # same rows, same order
    for name, label in out[1:]:
        task = name.split("/")[0]
        assert len(label) == {"task1": 1, "task2": 2, "task3": 4}[task]
        assert set(label) <= set("0123456789" if task == "task1" else "0123456789abcdefghijklmnopqrstuvwxyz")


def test_evaluation_report_matches_written_predictions(tmp_path, ckpts):
    data = make_folder(tmp_path / "val", {"task1": 20, "task3": 10})
    metrics = run_predict(tmp_path, f"[{ckpts['task1']},{ckpts['task3']}]", data)
    truth = dict(read_rows(data / "annotations.csv")[1:])
    pred = dict(read_rows(tmp_path / "submission.csv")[1:])
    exact = np.mean([pred[k] == v for k, v in truth.items()])
    chars = np.mean([a == b for k, v in truth.items() for a, b in zip(pred[k], v)])
    saved = json.loads((tmp_path / "submission.metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["overall"]["n"] == 30 and saved["task1"]["n"] == 20
    assert saved["overall"]["exact_match"] == pytest.approx(exact)
    assert saved["overall"]["char_acc"] == pytest.approx(chars)
    for picture in ("submission.confusion.png", "submission.mistakes_task1.png", "submission.mistakes_task3.png"):
        assert Image.open(tmp_path / picture).size[0] > 100


def test_plain_folder_and_partial(tmp_path, ckpts):
    data = make_folder(tmp_path / "imgs", {"task1": 4, "task2": 3})
    (data / "annotations.csv").unlink()
    with pytest.raises(CaptchaError, match="no model for 3 rows of task2"):
        run_predict(tmp_path, ckpts["task1"], data)
    run_predict(tmp_path, ckpts["task1"], data, allow_partial="true")
    out = read_rows(tmp_path / "submission.csv")
    assert [r[0] for r in out[1:]] == [f"task1/{i:05d}.png" for i in range(4)]


def test_output_is_atomic(tmp_path, ckpts):
    data = make_folder(tmp_path / "val", {"task1": 5})
    previous = "filename,label\nkeep,me\n"
    (tmp_path / "submission.csv").write_text(previous)
    (data / "task1" / "00003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(CaptchaError, match="00003.png: not a readable image"):
        run_predict(tmp_path, ckpts["task1"], data)
    assert (tmp_path / "submission.csv").read_text() == previous
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_clear_errors(tmp_path, ckpts):
    data = make_folder(tmp_path / "val", {"task1": 3})
    with pytest.raises(CaptchaError, match="no such file"):
        run_predict(tmp_path, tmp_path / "missing.ckpt", data)
    with pytest.raises(CaptchaError, match="two models for task1"):
        run_predict(tmp_path, f"[{ckpts['task1']},{ckpts['task1']}]", data)
    (data / "task1" / "00001.png").unlink()
    with pytest.raises(CaptchaError, match="00001.png: image not found"):
        run_predict(tmp_path, ckpts["task1"], data)
    # a checkpoint whose task and length disagree (a task1 model asked to read task3's 4 characters)
    ckpt = torch.load(ckpts["task1"], weights_only=True)
    ckpt["hyper_parameters"]["task"] = "task3"
    torch.save(ckpt, tmp_path / "wrong.ckpt")
    with pytest.raises(CaptchaError, match="for task3 but reads 1 characters"):
        CaptchaReader.from_checkpoint(tmp_path / "wrong.ckpt")


def test_onnx_gives_identical_predictions(tmp_path, ckpts):
    data = make_folder(tmp_path / "val", {"task3": 24})
    paths = sorted((data / "task3").glob("*.png"))
    onnx_path = export_onnx(ckpts["task3"], tmp_path / "task3.onnx")
    contract = json.loads((tmp_path / "task3.onnx.json").read_text())
    assert (contract["task"], contract["length"], contract["width"], contract["height"]) == ("task3", 4, 96, 72)
    torch_reader = CaptchaReader.from_checkpoint(ckpts["task3"], precision="32")
    onnx_reader = CaptchaReader.from_onnx(onnx_path)
    assert torch_reader.read(paths) == onnx_reader.read(paths)
    # and through predict.py, an .onnx model stands in for its checkpoint
    run_predict(tmp_path, onnx_path, data)
    assert [r[1] for r in read_rows(tmp_path / "submission.csv")[1:]] == onnx_reader.read(paths)


def test_reader_accepts_pil_paths_and_arrays(ckpts, tmp_path):
    data = make_folder(tmp_path / "val", {"task2": 5})
    paths = sorted((data / "task2").glob("*.png"))
    reader = CaptchaReader.from_checkpoint(ckpts["task2"], batch_size=2)
    from_paths = reader.read(paths)
    assert reader.read([Image.open(p) for p in paths]) == from_paths
    assert reader.read([np.asarray(Image.open(p).convert("RGB")) for p in paths]) == from_paths
    assert len(from_paths) == 5 and all(len(s) == 2 for s in from_paths)


def test_predict_cli_end_to_end(tmp_path, ckpts):
    data = make_folder(tmp_path / "val", {"task1": 6})
    out = tmp_path / "sub.csv"
    work = tmp_path / "cwd"
    work.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), f"ckpt={ckpts['task1']}", f"data_dir={data}",
                             f"output={out}", "progress=false"], cwd=work, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(read_rows(out)) == 7 and "task1: exact_match=" in result.stdout
    assert list(work.iterdir()) == []  # nothing but the output: no outputs/ or .hydra folder
