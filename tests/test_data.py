import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from captcha_lit.data.datamodule import CaptchaDataModule
from captcha_lit.data.datasets import split
from captcha_lit.errors import CaptchaError
from captcha_lit.data.folders import read_labelled
from captcha_lit.data.render import Renderer
from captcha_lit.data.seeded import sample_rng
from captcha_lit.data.tasks import Task, preset

from tests.helpers import compose_cfg, make_folder, make_named_folder, write_csv

DIGITS = "0123456789"
ALNUM = DIGITS + "abcdefghijklmnopqrstuvwxyz"


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


def test_rendering_any_task_size_length_and_fonts(tmp_path):
    import captcha
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    (tmp_path / "d").mkdir()
    source = next((Path(captcha.__file__).parent / "data").glob("*.ttf"))
    (fonts / "only.ttf").write_bytes(source.read_bytes())
    r = Renderer(150, 40, [3, 6], "ABCxyz", fonts=str(fonts))
    assert r.fonts == (str(fonts / "only.ttf"),) and r.font_sizes == (28, 33, 37)  # scaled to 40 pixels
    labels = [r.render(sample_rng(0, "t", i)) for i in range(40)]
    assert all(img.shape == (40, 150, 3) for img, _ in labels)
    assert {len(label) for _, label in labels} == {3, 4, 5, 6} and set("".join(l for _, l in labels)) <= set("ABCxyz")
    with pytest.raises(CaptchaError, match="data.fonts=.*no .ttf or .otf files"):
        Renderer(150, 40, 4, "ABC", fonts=str(tmp_path / "d"))


def _val_set(seed, **kw):
    task = Task("task2", 2, DIGITS + "abc", 72, 72)
    dm = CaptchaDataModule(task.config(), num_train=8, num_val=16, seed=seed, num_workers=0, **kw)
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
        dm = CaptchaDataModule(preset("task3").config(), root=str(folder), seed=seed, num_workers=0, val_fraction=0.2)
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
        task2 = read_labelled(root, preset("task2"))
    assert len(task2) == 6
    assert "dropped 1 duplicate rows" in caplog.text and "dropped 1 task2 rows (1 wrong length)" in caplog.text
    assert len(read_labelled(root, preset("task3"))) == 7
    task1 = read_labelled(root, preset("task1"))
    assert len(task1) == 5 and all(path.endswith(".png") and len(label) == 1 for path, label in task1)


def test_competition_layout_needs_a_competition_task(tmp_path):
    # the CSV's own errors (header, encoding, fields, duplicates, missing images): test_robustness.py
    root = make_folder(tmp_path / "d", {"task1": 3})
    with pytest.raises(CaptchaError, match=r"no usable rows of task3 \(rows per folder prefix: task1: 3\)"):
        read_labelled(root, preset("task3"))
    with pytest.raises(CaptchaError, match="the competition's layout .* choose one with task=task1"):
        read_labelled(root, Task("mine", 1, DIGITS, 72, 72))
    with pytest.raises(CaptchaError, match="no such folder"):
        read_labelled(tmp_path / "nowhere", preset("task1"))


def test_generate_writes_competition_layout_that_loads_back(tmp_path):
    from captcha_lit.commands.generate import generate
    out = tmp_path / "gen"
    cfg = compose_cfg("generate", [f"out={out}", "num.task1=12", "num.task2=0", "num.task3=10", "num_workers=1"])
    generate(cfg)
    rows = list(csv.reader(open(out / "annotations.csv")))
    assert rows[0] == ["filename", "label"] and len(rows) == 23
    assert {r[0].split("/")[0] for r in rows[1:]} == {"task1", "task3"}
    assert all((out / r[0]).is_file() and len(r[1]) == {"task1": 1, "task3": 4}[r[0][:5]] for r in rows[1:])
    cfg = compose_cfg("train", ["data=folder", f"data.root={out}", "task=task3", "data.num_workers=0"], tmp_path)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 10
    assert dm.train_set.images.shape[1:] == (72, 96, 3)


def test_label_named_layout(tmp_path):
    root = tmp_path / "named"
    root.mkdir()
    img = Image.new("RGB", (120, 40), "white")
    for name in ("2b827.png", "2b827_2.png", "Ab9x.v2.jpg", "sub/zz99.png", "notes.txt"):
        (root / name).parent.mkdir(exist_ok=True)
        img.save(root / name) if name.endswith(("png", "jpg")) else (root / name).write_text("x")
    items = read_labelled(root, Task("named", [4, 5], "0123456789Abxz", 120, 40))
    assert sorted(label for _, label in items) == ["2b827", "2b827", "Ab9x", "zz99"]
    with pytest.raises(CaptchaError, match=r"Ab9x.v2.jpg: label 'Ab9x' does not fit task t: characters 'A'"):
        read_labelled(root, Task("t", [4, 5], "0123456789abxz", 120, 40))
    assert "ab9x" in {label for _, label in read_labelled(root, Task("t", [4, 5], "0123456789abxz", 120, 40,
                                                                        lowercase=True))}
    with pytest.raises(CaptchaError, match=r"label '2b827' does not fit task t: length 5, expected 4; set task.length"):
        read_labelled(root, Task("t", 4, "0123456789Abxz", 120, 40))  # mixed lengths under a fixed-length task
    (root / "_x.png").write_bytes((root / "2b827.png").read_bytes())
    with pytest.raises(CaptchaError, match=r"_x.png: the name gives no label"):
        read_labelled(root, Task("t", [4, 5], "0123456789Abxz", 120, 40))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CaptchaError, match="no annotations.csv and no images"):
        read_labelled(empty, Task("t", 4, DIGITS, 120, 40))


def test_annotations_layout_reads_every_row_and_stays_inside_the_folder(tmp_path):
    root = make_named_folder(tmp_path / "src", 6, 4, DIGITS, 100, 40)
    (tmp_path / "src" / "deep").mkdir()
    files = sorted((tmp_path / "src").glob("*.png"))
    files[0].rename(tmp_path / "src" / "deep" / "a.png")
    rows = [("deep/a.png", files[0].stem)] + [(f.name, f.stem) for f in files[1:]]
    write_csv(root, rows)
    items = read_labelled(root, Task("t", 4, DIGITS, 100, 40))
    assert [(Path(p).relative_to(root).as_posix(), label) for p, label in items] == rows
    for bad in ("../outside.png", "/etc/passwd", "deep/../..", "deep/.."):
        write_csv(root, rows + [(bad, "1234")])
        with pytest.raises(CaptchaError, match=r"line 8: .* points outside"):
            read_labelled(root, Task("t", 4, DIGITS, 100, 40))
    write_csv(root, rows + [("./" + rows[1][0], rows[1][1])])  # one image under two spellings: one row
    assert len(read_labelled(root, Task("t", 4, DIGITS, 100, 40))) == len(rows)
    write_csv(root, rows[:2] + [(rows[2][0], "")] + rows[3:])
    with pytest.raises(CaptchaError, match=rf"annotations.csv, line 4: {rows[2][0]} has no label"):
        read_labelled(root, Task("t", 4, DIGITS, 100, 40))


def test_mixed_sizes_are_resized_and_said_once(tmp_path, caplog):
    root = make_named_folder(tmp_path / "d", 10, 4, DIGITS, 100, 40)
    for path in sorted(root.glob("*.png"))[:3]:
        Image.open(path).resize((130, 50)).save(path)
    dm = CaptchaDataModule(Task("d", 4, DIGITS, 100, 40).config(), root=str(root), num_workers=0, val_fraction=0.2,
                           synthetic_ratio=1.0, epoch_size=50)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert caplog.text.count("3 of 10 images are not 100x40; they are resized") == 1
    assert dm.train_set.images.shape == (8 + 8, 40, 100, 3) and len(dm.val_set) == 2
    assert sum(len(batch[0]) for batch in dm.train_dataloader()) == 50  # the epoch repeats the 16 images


def test_real_fraction_without_rendered_images_is_said_to_do_nothing(tmp_path, caplog):
    root = make_named_folder(tmp_path / "d", 10, 4, DIGITS, 100, 40)
    dm = CaptchaDataModule(Task("d", 4, DIGITS, 100, 40).config(), root=str(root), num_workers=0, val_fraction=0.2,
                           synthetic_ratio=0, real_fraction=0.5)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "data.real_fraction=0.5 has no effect: no rendered images join the real ones" in caplog.text


def test_real_fraction_sets_the_share_of_real_images_an_epoch_draws(tmp_path):
    root = make_named_folder(tmp_path / "d", 10, 4, DIGITS, 100, 40)
    dm = CaptchaDataModule(Task("d", 4, DIGITS, 100, 40).config(), root=str(root), num_workers=0, val_fraction=0.2,
                           synthetic_ratio=3.0, real_fraction=0.75, epoch_size=4000)
    dm.setup("fit")
    assert len(dm.train_set) == 8 + 24 and float(dm.train_weights[:8].sum()) == pytest.approx(0.75)
    real = torch.from_numpy(dm.train_set.images[:8]).movedim(-1, -3)
    drawn = [(images[:, None] == real[None]).flatten(2).all(-1).any(-1) for images, _ in dm.train_dataloader()]
    assert len(torch.cat(drawn)) == 4000 and 0.7 < torch.cat(drawn).float().mean() < 0.8
    from captcha_lit.commands.settings import check_settings
    with pytest.raises(CaptchaError, match="data.real_fraction=0: must be a number above 0 and at most 1"):
        check_settings(compose_cfg("train", ["data=mixed", f"data.root={root}", "data.real_fraction=0"]), "train")


def test_the_test_split_stays_when_validation_is_dropped():
    n = 200
    train, val, test = split(n, 0.15, 3, test_fraction=0.2)
    final_train, final_val, final_test = split(n, 0.0, 3, test_fraction=0.2)
    assert (len(train), len(val), len(test)) == (130, 30, 40)
    assert list(final_test) == list(test) and len(final_val) == 0  # final=true is tested on the same images
    assert sorted([*final_train]) == sorted([*train, *val])  # and trains on what validation held


@pytest.mark.parametrize("n", [101, 103])
def test_folds_test_on_disjoint_slices_that_cover_the_folder_and_never_train_on_them(n):
    tests = []
    for fold in range(5):
        train, val, test = split(n, 0.15, 3, test_fraction=0.2, fold=fold)
        assert len(test) in (20, 21) and len(val) == 15 and not set(test) & (set(train) | set(val))
        assert sorted([*train, *val, *test]) == list(range(n))
        tests.append(set(test))
    assert set().union(*tests) == set(range(n)) and sum(map(len, tests)) == n  # disjoint, and every image tested once
    with pytest.raises(CaptchaError, match=r"data.fold=4: data.test_fraction=0.25 makes 4 folds \(0 to 3\)"):
        split(n, 0.15, 3, test_fraction=0.25, fold=4)
    with pytest.raises(CaptchaError, match="data.fold=0: data.test_fraction=0.0 makes 0 folds: set data.test_fraction=0.2 for 5"):
        split(n, 0.15, 3, fold=0)
    with pytest.raises(CaptchaError, match="data.test_fraction=0.2 makes 5 folds of 3 images"):
        split(3, 0.15, 3, test_fraction=0.2, fold=1)  # a fold would test on none


def test_the_datamodule_tests_on_its_fold(tmp_path):
    root = make_named_folder(tmp_path / "d", 20, 4, DIGITS, 60, 30)
    tests = []
    for fold in (0, 1):
        dm = CaptchaDataModule(Task("d", 4, DIGITS, 60, 30).config(), root=str(root), num_workers=0, val_fraction=0.2,
                               test_fraction=0.5, fold=fold, materialize=False)
        dm.setup("test")
        tests.append({str(path) for path, _ in dm.test_set.items})
    assert len(tests[0]) == len(tests[1]) == 10 and not tests[0] & tests[1]


def test_an_epoch_pixel_budget_draws_fewer_images_of_larger_sizes(tmp_path):
    root = make_named_folder(tmp_path / "d", 10, 4, DIGITS, 100, 40)
    sizes = {}
    for width, height in ((100, 40), (200, 40)):
        dm = CaptchaDataModule(Task("d", 4, DIGITS, width, height).config(), root=str(root), num_workers=0,
                               val_fraction=0.2, epoch_pixels=100 * 40 * 30)
        dm.setup("fit")
        sizes[width] = sum(len(batch[0]) for batch in dm.train_dataloader())
    assert sizes == {100: 30, 200: 15}
    with pytest.raises(CaptchaError, match="data.epoch_size and data.epoch_pixels both set"):
        CaptchaDataModule(Task("d", 4, DIGITS, 100, 40).config(), root=str(root), epoch_size=5, epoch_pixels=10)
