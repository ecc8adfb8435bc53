import csv
import logging

import numpy as np
import pytest
from hydra.utils import instantiate

from captcha_lit.data import CaptchaDataModule, read_annotations
from captcha_lit.errors import CaptchaError
from captcha_lit.render import Renderer, sample_rng

from conftest import compose_cfg, make_folder

DIGITS = "0123456789"


@pytest.mark.parametrize("style", ["imagecaptcha", "kaggle"])
def test_rendering_is_seeded(style):
    r = Renderer(96, 72, 4, DIGITS, style=style)
    a, la = r.render(sample_rng(0, "val", 3))
    b, lb = r.render(sample_rng(0, "val", 3))
    c, _ = r.render(sample_rng(1, "val", 3))
    assert a.shape == (72, 96, 3) and a.dtype == np.uint8 and len(la) == 4
    assert la == lb and (a == b).all() and not (a == c).all()
    with pytest.raises(CaptchaError, match="data.style='fancy'"):
        Renderer(96, 72, 4, DIGITS, style="fancy")


def _val_set(seed, **kw):
    dm = CaptchaDataModule("task2", 2, DIGITS + "abc", 72, 72, num_train=8, num_val=16, seed=seed, num_workers=0, **kw)
    dm.setup("fit")
    return dm.val_set.images, dm.val_set.targets


def test_same_seed_same_validation_set(tmp_path):
    a, ta = _val_set(0)
    b, tb = _val_set(0, materialize=True, cache_dir=tmp_path)  # through the on-disk cache too
    c, tc = _val_set(1)
    assert (a == b).all() and (ta == tb).all()
    assert not (a == c).all()


def test_kaggle_split_fixed_by_seed(folder):
    def val_targets(seed):
        dm = CaptchaDataModule("task3", 4, DIGITS + "abcdefghijklmnopqrstuvwxyz", 96, 72, source="kaggle",
                               root=str(folder), seed=seed, num_workers=0, val_fraction=0.2)
        dm.setup("fit")
        return dm.val_set.targets, len(dm.train_set)
    (a, n), (b, _), (c, _) = val_targets(0), val_targets(0), val_targets(5)
    assert len(a) == 6 and n == 24 and (a == b).all() and not (a == c).all()


def test_kaggle_loader_filters_and_counts(tmp_path, caplog):
    root = make_folder(tmp_path / "d", {"task1": 5, "task2": 6, "task3": 7})
    rows = list(csv.reader(open(root / "annotations.csv")))
    duplicate = next(r for r in rows if r[0].startswith("task2/"))
    with open(root / "annotations.csv", "a", newline="") as f:  # bad rows are dropped before any file is read
        csv.writer(f).writerows([("task1/x.png", "12"), ("task2/y.png", "a"), ("task3/z.png", "AB12"), duplicate])
    with caplog.at_level(logging.WARNING):
        task2 = read_annotations(root, "task2", 2, DIGITS + "abcdefghijklmnopqrstuvwxyz")
    assert len(task2) == 6
    assert "dropped 2 task2 rows (1 wrong length, 1 duplicate)" in caplog.text
    assert len(read_annotations(root, "task3", 4, DIGITS + "abcdefghijklmnopqrstuvwxyz")) == 7
    task1 = read_annotations(root, "task1", 1, DIGITS)
    assert len(task1) == 5 and all(path.endswith(".png") and len(label) == 1 for path, label in task1)


def test_kaggle_loader_errors(tmp_path):
    root = make_folder(tmp_path / "d", {"task1": 3})
    with pytest.raises(CaptchaError, match="no usable rows of task3"):
        read_annotations(root, "task3", 4, DIGITS)
    first_label = list(csv.reader(open(root / "annotations.csv")))[1][1]
    with open(root / "annotations.csv", "a") as f:
        f.write(f"task1/00000.png,{'1' if first_label == '0' else '0'}\n")
    with pytest.raises(CaptchaError, match="lines 2 and 5: task1/00000.png is labelled both"):
        read_annotations(root, "task1", 1, DIGITS)
    make_folder(root, {"task1": 3})
    (root / "task1" / "00001.png").unlink()
    with pytest.raises(CaptchaError, match=r"line 3: image .*00001.png not found"):
        read_annotations(root, "task1", 1, DIGITS)
    (root / "annotations.csv").write_text("name,text\nx,1\n")
    with pytest.raises(CaptchaError, match="header 'filename,label'"):
        read_annotations(root, "task1", 1, DIGITS)
    with pytest.raises(CaptchaError, match="no such folder"):
        read_annotations(tmp_path / "nowhere", "task1", 1, DIGITS)


def test_generate_writes_competition_layout_that_loads_back(tmp_path):
    from captcha_lit.generate import generate
    out = tmp_path / "gen"
    cfg = compose_cfg("generate", [f"out={out}", "num.task1=12", "num.task2=0", "num.task3=10", "num_workers=1"])
    generate(cfg)
    rows = list(csv.reader(open(out / "annotations.csv")))
    assert rows[0] == ["filename", "label"] and len(rows) == 23
    assert {r[0].split("/")[0] for r in rows[1:]} == {"task1", "task3"}
    assert all((out / r[0]).is_file() and len(r[1]) == {"task1": 1, "task3": 4}[r[0][:5]] for r in rows[1:])
    cfg = compose_cfg("train", ["data=kaggle", f"data.root={out}", "task=task3", "data.num_workers=0"], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 10
    assert dm.train_set.images.shape[1:] == (72, 96, 3)
