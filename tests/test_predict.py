import contextlib
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from captcha_lit import CaptchaReader
from captcha_lit.errors import CaptchaError
from captcha_lit.reading.export import export_ddddocr, export_int8, export_onnx, int8_from_folder
from captcha_lit.commands.predict import predict
from captcha_lit.reading.reader import near_ties, shifted
from captcha_lit.commands.train import train

from tests.helpers import ROOT, TINY, compose_cfg, make_folder, make_named_folder, write_csv

NAMED = dict(length=[3, 5], alphabet="0123456789ABCxyz", width=120, height=40)  # a variable-length task of one's own


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """One briefly trained checkpoint per task (tiny network: predictions are poor but real)."""
    out = {}
    for task in ("task1", "task2", "task3"):
        run = tmp_path_factory.mktemp(task)
        train(compose_cfg("train", [f"task={task}", "trainer=cpu", "trainer.max_steps=3", "test=false"] + TINY, run))
        out[task] = str(run / "checkpoints" / "last.ckpt")
    # a CTC model of a task inferred from label-named images
    data = make_named_folder(tmp_path_factory.mktemp("named") / "mine", 40, **NAMED)
    run = tmp_path_factory.mktemp("named-run")
    train(compose_cfg("train", ["task=auto", "data=folder", f"data.root={data}", "model.head=ctc", "trainer=cpu",
                                "trainer.max_steps=3", "test=false"] + TINY, run))
    out["mine"] = str(run / "checkpoints" / "last.ckpt")
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


def test_report_scores_each_image_once(tmp_path, ckpts):
    data = make_folder(tmp_path / "val", {"task1": 6})
    rows = read_rows(data / "annotations.csv")
    twice = rows + [["./" + rows[1][0], rows[1][1]], rows[2]]  # two images listed again, one as ./NAME
    write_csv(data, twice[1:])
    metrics = run_predict(tmp_path, ckpts["task1"], data)
    out = read_rows(tmp_path / "submission.csv")
    assert [r[0] for r in out] == [r[0] for r in twice]  # every row is read and written, in order
    assert (out[7][1], out[8][1]) == (out[1][1], out[2][1])  # ./task1/NAME is task1/NAME
    truth, pred = dict(rows[1:]), dict(out[1:7])
    assert metrics["overall"]["n"] == 6
    assert metrics["overall"]["exact_match"] == pytest.approx(np.mean([pred[k] == v for k, v in truth.items()]))


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
    with pytest.raises(CaptchaError, match="cannot be averaged: their task, length, alphabet, width differ"):
        CaptchaReader.ensemble([CaptchaReader.from_checkpoint(ckpts["task1"]), CaptchaReader.from_checkpoint(ckpts["task3"])])
    (data / "task1" / "00001.png").unlink()
    with pytest.raises(CaptchaError, match="00001.png: image not found"):
        run_predict(tmp_path, ckpts["task1"], data)
    # a checkpoint whose length and weights disagree (a task1 model said to read 4 characters)
    ckpt = torch.load(ckpts["task1"], weights_only=True)
    ckpt["hyper_parameters"]["length"] = 4
    torch.save(ckpt, tmp_path / "wrong.ckpt")
    with pytest.raises(CaptchaError, match="wrong.ckpt: its hyperparameters and weights do not fit"):
        CaptchaReader.from_checkpoint(tmp_path / "wrong.ckpt")


def test_onnx_gives_identical_predictions(tmp_path, ckpts):
    data = make_folder(tmp_path / "val", {"task3": 24})
    paths = sorted((data / "task3").glob("*.png"))
    onnx_path = export_onnx(ckpts["task3"], tmp_path / "task3.onnx")
    contract = json.loads((tmp_path / "task3.onnx.json").read_text())
    assert (contract["task"], contract["length"], contract["width"], contract["height"]) == ("task3", 4, 96, 72)
    torch_reader = CaptchaReader.from_checkpoint(ckpts["task3"], precision="32")
    onnx_reader = CaptchaReader.from_onnx(onnx_path)
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    assert np.allclose(torch_reader.logits(images), onnx_reader.logits(images), atol=1e-4)
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
    larger = [Image.open(p).convert("RGB").resize((144, 100)) for p in paths]
    for mode in ("RGB", "L", "RGBA"):  # arrays of any size, grey or with alpha, read as their PIL images do
        images = [image.convert(mode) for image in larger]
        texts, confidence = reader.predict(images)
        from_arrays = reader.predict([np.asarray(image) for image in images])
        assert from_arrays[0] == texts and np.allclose(from_arrays[1], confidence)
    grey = larger[0].convert("L")
    assert reader.read(np.asarray(grey)) == reader.read([grey])  # one 2-D array is one image, not a list of rows


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


def test_a_task_of_ones_own_end_to_end(tmp_path, ckpts):
    """task=auto inferred the task, the checkpoint carries it, and predict.py, the reader and the
    ONNX export read label-named images with nothing else given."""
    hp = torch.load(ckpts["mine"], weights_only=True)["hyper_parameters"]
    assert (hp["task"], hp["length"], hp["width"], hp["height"], hp["head"]) == ("mine", [3, 5], 120, 40, "ctc")
    assert set(hp["alphabet"]) <= set(NAMED["alphabet"])
    data = make_named_folder(tmp_path / "test", 12, seed=5, **{**NAMED, "alphabet": hp["alphabet"]})
    write_csv(data, [(p.name, p.stem.split("_")[0]) for p in sorted(data.glob("*.png"))])
    metrics = run_predict(tmp_path, ckpts["mine"], data)
    reader = CaptchaReader.from_checkpoint(ckpts["mine"], precision="32")
    paths = sorted(data.glob("*.png"))
    assert [r[1] for r in read_rows(tmp_path / "submission.csv")[1:]] == reader.read(paths)
    assert metrics["mine"]["n"] == 12
    onnx_reader = CaptchaReader.from_onnx(export_onnx(ckpts["mine"], tmp_path / "mine.onnx"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    assert np.allclose(reader.logits(images), onnx_reader.logits(images), atol=1e-4)
    assert onnx_reader.read(paths) == reader.read(paths)


@pytest.mark.parametrize("name", ["task3", "mine"])
def test_ddddocr_loads_the_export_and_reads_the_same_strings(tmp_path, ckpts, name):
    ddddocr = pytest.importorskip("ddddocr")
    model, charsets = export_ddddocr(ckpts[name], tmp_path / "model")
    assert (model.name, charsets.name) == ("model.onnx", "model.charsets.json")
    ocr = ddddocr.DdddOcr(ocr=False, det=False, import_onnx_path=str(model), charsets_path=str(charsets), show_ad=False)
    reader = CaptchaReader.from_checkpoint(ckpts[name], precision="32")
    if name == "task3":
        paths = sorted((make_folder(tmp_path / "d", {"task3": 10}) / "task3").glob("*.png"))
        # force readings with repeated characters: the heads' weights say "f99f" whatever the image
        module = torch.load(ckpts[name], weights_only=True)
        bias = torch.full((4, 36), -5.0)
        for i, c in enumerate("f99f"):
            bias[i, "0123456789abcdefghijklmnopqrstuvwxyz".index(c)] = 5.0
        module["state_dict"]["net.heads.weight"].zero_()
        module["state_dict"]["net.heads.bias"] = bias.flatten()
        torch.save(module, tmp_path / "f99f.ckpt")
        model, charsets = export_ddddocr(tmp_path / "f99f.ckpt", tmp_path / "f99f")
        forced = ddddocr.DdddOcr(ocr=False, det=False, import_onnx_path=str(model), charsets_path=str(charsets),
                                 show_ad=False)
        assert [forced.classification(p.read_bytes()) for p in paths[:3]] == ["f99f"] * 3
    else:
        paths = sorted(make_named_folder(tmp_path / "d", 10, seed=3, **NAMED).glob("*.png"))
    ours = reader.read(paths)
    assert [ocr.classification(p.read_bytes()) for p in paths] == ours
    # the scores agree too: ddddocr's softmax at each character step is the reader's
    got = ocr.classification(paths[0].read_bytes(), probability=True)
    probs = np.asarray(got["probabilities"]).reshape(-1, len(got["charset"]))
    logits = reader.logits(np.asarray(Image.open(paths[0]).convert("RGB"))[None])[0]
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    if name == "task3":  # character steps are every other step, and never the blank
        probs = probs[::2, 1:]
    assert np.allclose(probs, expected, atol=1e-4)


def test_decoding_workers_give_the_same_rows_and_errors(tmp_path, ckpts):
    data = make_folder(tmp_path / "d", {"task1": 70})  # enough for two processes (chunks of 32)
    paths = sorted((data / "task1").glob("*.png"))
    serial = CaptchaReader.from_checkpoint(ckpts["task1"], num_workers=0, batch_size=16).predict(paths)
    pooled = CaptchaReader.from_checkpoint(ckpts["task1"], num_workers=2, batch_size=16).predict(paths)
    assert serial[0] == pooled[0] and np.allclose(serial[1], pooled[1])
    paths[50].write_bytes(b"not a png")
    with pytest.raises(CaptchaError, match=f"{paths[50].name}: not a readable image"):
        CaptchaReader.from_checkpoint(ckpts["task1"], num_workers=2).read(paths)


def test_rows_pointing_outside_the_folder_are_refused(tmp_path, ckpts):
    data = make_folder(tmp_path / "test", {"task1": 3})
    (tmp_path / "secret.png").write_bytes((data / "task1" / "00000.png").read_bytes())
    write_csv(data, [("task1/00000.png", "1"), ("../secret.png", "2")])
    with pytest.raises(CaptchaError, match=r"annotations.csv, line 3: '../secret.png' points outside"):
        run_predict(tmp_path, ckpts["task1"], data)
    write_csv(data, [("task1/00000.png", "1"), ("", "2")])
    with pytest.raises(CaptchaError, match=r"annotations.csv, line 3: no filename"):
        run_predict(tmp_path, ckpts["task1"], data)
    # an image linked in from elsewhere is inside the folder by its name, and read
    (data / "task1" / "linked.png").symlink_to(tmp_path / "secret.png")
    write_csv(data, [("task1/00000.png", "1"), ("task1/linked.png", "2")])
    run_predict(tmp_path, ckpts["task1"], data)
    rows = read_rows(tmp_path / "submission.csv")
    assert [r[0] for r in rows[1:]] == ["task1/00000.png", "task1/linked.png"] and rows[1][1] == rows[2][1]


def test_rows_of_a_competition_task_without_its_model_are_not_read_by_another(tmp_path, ckpts):
    data = make_folder(tmp_path / "test", {"task3": 3})
    with pytest.raises(CaptchaError, match="no model for 3 rows of task3"):
        run_predict(tmp_path, ckpts["task1"], data)


@pytest.mark.parametrize("kind, absent", [("onnx", "['captcha', 'hydra', 'pytorch_lightning', 'torch']"),
                                           ("int8 copy", "['captcha', 'hydra', 'pytorch_lightning', 'torch']"),
                                           ("ckpt", "['captcha', 'hydra', 'pytorch_lightning']")])
def test_reading_imports_neither_lightning_nor_the_renderer(tmp_path, ckpts, int8_run, kind, absent):
    model = {"onnx": lambda: export_onnx(ckpts["task1"], tmp_path / "task1.onnx"), "ckpt": lambda: ckpts["task1"],
             "int8 copy": lambda: int8_run[0]}[kind]()
    load = {"onnx": "CaptchaReader.from_onnx({!r})", "ckpt": "CaptchaReader.from_checkpoint({!r})",
            "int8 copy": "CaptchaReader.from_checkpoint({!r}, precision='int8')"}[kind].format(str(model))
    image = sorted((make_folder(tmp_path / "d", {"task1": 2}) / "task1").glob("*.png"))[0]
    code = (f"import sys; from captcha_lit import CaptchaReader; print({load}.read({str(image)!r})); "
            f"print(sorted(m for m in ('torch', 'pytorch_lightning', 'captcha', 'hydra') if m not in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    reading, not_imported = result.stdout.splitlines()
    assert reading == str(CaptchaReader.from_checkpoint(model).read([image]) if kind == "ckpt" else
                          CaptchaReader.from_onnx(model if kind == "onnx" else model.with_suffix(".int8.onnx")).read([image]))
    assert not_imported == absent


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_an_ensemble_averages_the_probabilities_of_its_models(tmp_path, ckpts):
    data = make_folder(tmp_path / "d", {"task3": 12})
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((data / "task3").glob("*.png"))])
    train(compose_cfg("train", ["task=task3", "trainer=cpu", "trainer.max_steps=2", "test=false", "seed=7"] + TINY,
                      tmp_path / "run"))
    other = str(tmp_path / "run" / "checkpoints" / "last.ckpt")  # the same task, other weights
    a, b = (CaptchaReader.from_checkpoint(c, precision="32") for c in (ckpts["task3"], other))
    both = CaptchaReader.ensemble([a, b])
    mean = (softmax(a.logits(images)) + softmax(b.logits(images))) / 2
    assert np.allclose(np.exp(both.logits(images)), mean, atol=1e-5)
    assert both.read(images) == ["".join(both.spec.alphabet[i] for i in row) for row in mean.argmax(-1)]
    # through predict.py: two checkpoints of one task in ckpt= are one averaged model
    run_predict(tmp_path, f"[{ckpts['task3']},{other}]", data, precision=32)
    assert [r[1] for r in read_rows(tmp_path / "submission.csv")[1:]] == both.read(images)


def test_test_time_views_shift_zoom_and_average(ckpts):
    image = np.zeros((1, 72, 72, 3), np.uint8)
    image[0, 30, 40] = 255
    assert shifted(image, 2, 0, 1.0)[0, 30, 42].all() and shifted(image, 0, -2, 1.0)[0, 28, 40].all()
    assert shifted(image, 0, 0, 1.0).tobytes() == image.tobytes()
    zoomed = np.argwhere(shifted(image, 0, 0, 1.5)[0, :, :, 0])  # the dot moves away from the centre
    assert zoomed[:, 1].min() > 40 and zoomed[:, 0].max() < 30
    reader = CaptchaReader.from_checkpoint(ckpts["task1"], precision="32", tta=3)
    plain = CaptchaReader.from_checkpoint(ckpts["task1"], precision="32")
    images = np.random.default_rng(0).integers(0, 256, (4, 72, 72, 3), dtype=np.uint8)
    views = [images, shifted(images, 2, 0, 1.0), shifted(images, -2, 0, 1.0)]
    mean = np.mean([softmax(plain.logits(v)) for v in views], 0)
    assert np.allclose(np.exp(reader.logits(images)), mean, atol=1e-5)
    with pytest.raises(CaptchaError, match="tta=0: must be a whole number from 1"):
        CaptchaReader.from_checkpoint(ckpts["task1"], tta=0)


def test_a_multirun_folder_gives_each_tasks_best_checkpoint(tmp_path, ckpts, capsys):
    import shutil
    sweep = tmp_path / "multirun"
    for job, task in enumerate(("task2", "task1", "task3")):
        (sweep / str(job) / "checkpoints").mkdir(parents=True)
        shutil.copy(ckpts[task], sweep / str(job) / "checkpoints" / "best-epoch003-exact0.9000.ckpt")
        shutil.copy(ckpts["task2"], sweep / str(job) / "checkpoints" / "last.ckpt")  # never taken over a best
    (sweep / ".hydra").mkdir()  # the sweep's own files sit beside the jobs
    data = make_folder(tmp_path / "test", {"task1": 4, "task2": 3, "task3": 2})
    run_predict(tmp_path, sweep, data)
    from_sweep = read_rows(tmp_path / "submission.csv")
    assert "ckpt=" + str(sweep) + ": task3 from " + str(sweep / "2" / "checkpoints") in capsys.readouterr().out
    run_predict(tmp_path, f"[{ckpts['task1']},{ckpts['task2']},{ckpts['task3']}]", data)
    assert from_sweep == read_rows(tmp_path / "submission.csv")
    # a final=true run has no best checkpoint: its last one is the model
    (sweep / "1" / "checkpoints" / "best-epoch003-exact0.9000.ckpt").unlink()
    shutil.copy(ckpts["task1"], sweep / "1" / "checkpoints" / "last.ckpt")
    run_predict(tmp_path, sweep, data)
    assert from_sweep == read_rows(tmp_path / "submission.csv")
    shutil.copytree(sweep / "2", sweep / "3")
    with pytest.raises(CaptchaError, match=r"both trained task3; name the checkpoints to use in ckpt=\[...\]"):
        run_predict(tmp_path, sweep, data)


def test_an_int8_export_is_calibrated_on_the_tasks_images_and_stays_close_to_fp32(tmp_path, ckpts):
    data = make_folder(tmp_path / "d", {"task1": 40, "task3": 40})
    ckpt = shutil.copy(ckpts["task3"], tmp_path / "t3.ckpt")
    fp32 = CaptchaReader.from_onnx(export_onnx(ckpt, tmp_path / "f.onnx"))
    said = int8_from_folder(ckpt, data)  # calibrates on d/task3; no others to check on: the same 40
    int8_path = tmp_path / "t3.int8.onnx"  # by default the checkpoint's int8 copy, with its fp32 original
    contract = json.loads((tmp_path / "t3.int8.onnx.json").read_text())
    assert contract["precision"] == "int8" and contract["checkpoint_sha256"] == hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
    assert int8_path.stat().st_size < 0.5 * (tmp_path / "f.onnx").stat().st_size  # int8 weights
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((data / "task3").glob("*.png"))])
    copy = CaptchaReader.from_onnx(int8_path)
    same = sum(x == y for x, y in zip(fp32.read(images), copy.read(images)))
    margin, again = contract["second_look"]["margin"], contract["agreement"]["read_again"]
    assert contract["second_look"]["model"] == "t3.int8.fp32.onnx" and margin > 0
    assert contract["agreement"] == {"images": 40, "same_string": same, "read_again": again}
    assert said == f"{int8_path}: reads as fp32 on {same} of 40 images of {data}" + (
        f"; {again} near ties read again in fp32" if again else "")
    # the copy reads as its int8 model does, but its near ties (and only those) as the fp32 original does
    import onnxruntime as ort
    raw = {name: ort.InferenceSession(str(tmp_path / name)).run(None, {"images": images.transpose(0, 3, 1, 2).copy()})[0]
           for name in ("t3.int8.onnx", "t3.int8.fp32.onnx")}
    int8, original = raw["t3.int8.onnx"], raw["t3.int8.fp32.onnx"]
    assert np.corrcoef(int8.ravel(), original.ravel())[0, 1] > 0.98 and not np.allclose(int8, original, atol=1e-4)
    close = near_ties(int8, margin)
    assert 0 < again == close.sum() < 40 and np.array_equal(copy.logits(images), np.where(close[:, None, None], original, int8))
    plain = export_int8(ckpt, images[:8], images, tmp_path / "plain.int8.onnx")[0]  # an explicit output: int8 alone
    assert "second_look" not in json.loads((tmp_path / "plain.int8.onnx.json").read_text())
    plain_raw = ort.InferenceSession(str(plain)).run(None, {"images": images.transpose(0, 3, 1, 2).copy()})[0]
    assert not (tmp_path / "plain.int8.fp32.onnx").exists()
    assert np.array_equal(CaptchaReader.from_onnx(plain).logits(images), plain_raw)  # read as it is
    (tmp_path / "t3.int8.fp32.onnx").unlink()
    with pytest.raises(CaptchaError, match="reads near ties again with .*t3.int8.fp32.onnx, which is missing"):
        CaptchaReader.from_onnx(int8_path)
    with pytest.raises(CaptchaError, match="no images to calibrate on"):
        int8_from_folder(ckpt, tmp_path / "empty")


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    """A briefly trained task1 run that wrote its int8 copy, and what it printed."""
    run = tmp_path_factory.mktemp("int8-run")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(compose_cfg("train", ["task=task1", "trainer=cpu", "test=false"] + TINY + ["int8=true"], run))
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    return best, out.getvalue()


def read_with(tmp_path, ckpt, data, capsys, **extra):
    run_predict(tmp_path, ckpt, data, **{"device": "cpu", **extra})  # on the CPU even where a GPU is visible
    return read_rows(tmp_path / "submission.csv"), capsys.readouterr().out.splitlines()[0]


def test_training_writes_an_int8_copy_that_predict_reads_with_where_it_pays(tmp_path, int8_run, capsys, monkeypatch):
    best, printed = int8_run
    copy, contract_path = best.with_suffix(".int8.onnx"), best.with_suffix(".int8.onnx.json")
    contract = json.loads(contract_path.read_text())
    assert contract["checkpoint_sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    same = contract["agreement"]["same_string"]
    assert contract["agreement"]["images"] == 64 and 0 <= same <= 64  # the 64 validation images
    assert f"int8 copy: {copy} reads as fp32 on {same} of 64 validation images" in printed
    assert best.with_suffix(".int8.fp32.onnx").is_file()  # the fp32 original, for the copy's near ties
    data = make_folder(tmp_path / "d", {"task1": 20})
    monkeypatch.setattr("captcha_lit.reading.int8.cpu_has_vnni", lambda: True)
    monkeypatch.setattr("captcha_lit.reading.int8.AGREEMENT", same / 64)  # this tiny model's own agreement passes
    direct, _ = read_with(tmp_path, copy, data, capsys)
    rows, said = read_with(tmp_path, best, data, capsys)
    again = contract["agreement"]["read_again"]
    assert rows == direct and said == (f"task1: int8 from its copy {copy.name} (reads as fp32 on {same} of 64 checked "
                                       f"images" + (f"; {again} near ties read again in fp32)" if again else ")"))
    _, said = read_with(tmp_path, best, data, capsys, precision=32)  # the flag that forces fp32
    assert said == "task1: fp32 on cpu"
    monkeypatch.setattr("captcha_lit.reading.int8.cpu_has_vnni", lambda: False)
    _, said = read_with(tmp_path, best, data, capsys)
    assert re.fullmatch(r"task1: (bf16|fp32) on cpu; int8 copy not used: .*: this CPU has no VNNI, where int8 does not pay", said)
    assert read_with(tmp_path, best, data, capsys, precision="int8")[0] == direct  # forced, whatever the CPU


def test_an_int8_copy_is_not_used_when_unfaithful_or_made_from_another_checkpoint(tmp_path, int8_run, ckpts, capsys,
                                                                                  monkeypatch):
    best, _ = int8_run
    ckpt = shutil.copy(best, tmp_path / "m.ckpt")
    for suffix in (".int8.onnx", ".int8.onnx.json", ".int8.fp32.onnx"):
        shutil.copy(best.with_suffix(suffix), tmp_path / f"m{suffix}")
    data = make_folder(tmp_path / "d", {"task1": 10})
    monkeypatch.setattr("captcha_lit.reading.int8.cpu_has_vnni", lambda: True)
    contract_path = tmp_path / "m.int8.onnx.json"
    contract = json.loads(contract_path.read_text())
    contract["agreement"] = {"images": 1000, "same_string": 998}  # 99.8 %: one image too many read otherwise
    contract_path.write_text(json.dumps(contract))
    _, said = read_with(tmp_path, ckpt, data, capsys)
    assert said.endswith("int8 copy not used: m.int8.onnx (reads as fp32 on 998 of 1000 checked images): not faithful enough")
    contract_path.write_text(json.dumps({**contract, "agreement": None}))  # never checked
    assert read_with(tmp_path, ckpt, data, capsys)[1].endswith("(reads as fp32 on 0 of 0 checked images): not faithful enough")
    contract["agreement"]["same_string"] = 999
    contract["second_look"]["model"] = "m.int8.fp32.onnx"
    contract_path.write_text(json.dumps(contract))
    assert read_with(tmp_path, ckpt, data, capsys)[1].startswith("task1: int8 from its copy m.int8.onnx")
    (tmp_path / "m.int8.fp32.onnx").rename(tmp_path / "elsewhere.onnx")
    assert read_with(tmp_path, ckpt, data, capsys)[1].endswith("its fp32 original m.int8.fp32.onnx is missing")
    contract_path.write_text(json.dumps({**contract, "second_look": {"model": "elsewhere.onnx"}}))
    assert read_with(tmp_path, ckpt, data, capsys)[1].endswith("its contract's second_look is unreadable")
    shutil.copy(ckpts["task1"], ckpt)  # the checkpoint replaced: its old copy is another model's
    _, said = read_with(tmp_path, ckpt, data, capsys)
    assert said.endswith("int8 copy not used: m.int8.onnx was made from another checkpoint")
    with pytest.raises(CaptchaError, match=r"precision=int8: .*m.ckpt has an int8 copy made from another checkpoint at "
                                           r".*m.int8.onnx; make one with: captcha-export .*m.ckpt --int8 IMAGES"):
        run_predict(tmp_path, ckpt, data, precision="int8")
    with pytest.raises(CaptchaError, match="precision=int8 runs on the CPU"):
        CaptchaReader.from_checkpoint(best, device="cuda", precision="int8")


def test_a_failed_int8_copy_costs_the_copy_not_the_run(tmp_path, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("quantiser exploded")
    monkeypatch.setattr("captcha_lit.reading.export.export_int8", broken)
    score = train(compose_cfg("train", ["task=task1", "trainer=cpu", "test=false"] + TINY + ["int8=true"], tmp_path))
    best = next((tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert 0 <= score <= 1 and not best.with_suffix(".int8.onnx").exists()
    assert f"int8 copy not written (RuntimeError: quantiser exploded); make one with: captcha-export {best} --int8" in caplog.text


def test_the_ddddocr_export_reads_transparent_and_grey_images_as_the_reader_does(tmp_path, ckpts):
    """ddddocr's own model reads an RGBA PNG as it is; a swapped-in export must not need png_fix."""
    ddddocr = pytest.importorskip("ddddocr")
    model, charsets = export_ddddocr(ckpts["task3"], tmp_path / "model")
    ocr = ddddocr.DdddOcr(ocr=False, det=False, import_onnx_path=str(model), charsets_path=str(charsets), show_ad=False)
    reader = CaptchaReader.from_checkpoint(ckpts["task3"], precision="32")
    paths = sorted((make_folder(tmp_path / "d", {"task3": 6}) / "task3").glob("*.png"))
    for i, path in enumerate(paths):
        rgb = Image.open(path).convert("RGB")
        alpha = Image.fromarray(np.where(np.asarray(rgb.convert("L")) > 200, 0, 255).astype(np.uint8))
        variants = {"rgba": Image.merge("RGBA", (*rgb.split(), alpha)), "grey": rgb.convert("L")}
        for kind, image in variants.items():
            saved = tmp_path / f"{i}-{kind}.png"
            image.save(saved)
            assert ocr.classification(saved.read_bytes()) == reader.read([saved])[0], (kind, path)
