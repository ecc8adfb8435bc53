"""The general reader's parts: the many-style renderer, a CTC head carried to another alphabet,
zero-shot reading narrowed to some characters, a pretraining that survives an interruption, and
experiment=auto starting from the packaged reader."""
import numpy as np
import pytest
import torch
from PIL import Image

from captcha_lit.commands.train import train
from captcha_lit.errors import CaptchaError
from captcha_lit.model.module import CaptchaModule
from captcha_lit.reading.reader import CaptchaReader, decode_logits, restriction
from captcha_lit.data.render import Renderer
from captcha_lit.data.seeded import sample_rng
from captcha_lit.data.styles import PER_FAMILY, _draws_letters, font_pool
from captcha_lit.model.packaged import model_path
from captcha_lit.model.warm_start import ctc_rows, start_from
from tests.helpers import compose_cfg, make_named_folder

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TINY_CTC = dict(head="ctc", widths=[16, 16, 32, 32], strides=[2, 2, 2, [2, 1]])


def task(alphabet):
    return dict(name="t", length=[1, 4], alphabet=alphabet, width=64, height=32)


def test_the_general_style_is_seeded_varied_and_labelled_within_the_task():
    renderer = Renderer(128, 48, [1, 8], ALNUM, style="general")
    drawn = [renderer.render(sample_rng(0, "train", i)) for i in range(60)]
    again = [renderer.render(sample_rng(0, "train", i)) for i in range(3)]
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(drawn, again))
    assert all(img.shape == (48, 128, 3) and img.dtype == np.uint8 for img, _ in drawn)
    labels = [label for _, label in drawn]
    assert all(1 <= len(label) <= 8 and set(label) <= set(ALNUM) for label in labels)
    assert len({len(label) for label in labels}) >= 6 and any(c.isupper() for c in "".join(labels))
    # different backgrounds: the mean colour of the images spreads widely
    assert np.std([img.mean() for img, _ in drawn]) > 15
    assert len(font_pool()) >= 1


def test_the_font_pool_keeps_fonts_that_draw_every_character_in_both_cases():
    from collections import Counter
    from pathlib import Path

    import captcha
    from PIL import ImageFont
    real = ImageFont.truetype(str(Path(captcha.__file__).parent / "data" / "DroidSansMono.ttf"), 32)

    class Redrawn:  # the font, drawing some characters as others
        def __init__(self, swap):
            self.getmask = lambda c: real.getmask(swap(c))

    assert _draws_letters(real)
    assert not _draws_letters(Redrawn(str.upper))  # small caps / unicase: lower case is upper case
    assert not _draws_letters(Redrawn(lambda c: "\U0010FFFD" if c == "q" else c))  # no glyph for q
    assert _draws_letters(Redrawn(lambda c: "o" if c == "q" else c))  # a font may draw two alike
    families = Counter(ImageFont.truetype(p, 20).getname()[0] for p in font_pool())
    assert max(families.values()) <= PER_FAMILY


def test_the_shares_of_the_competitions_generator_and_look_are_data_settings(monkeypatch):
    import captcha_lit.data.styles as styles
    from captcha_lit.commands.settings import check_settings
    from captcha_lit.data.datamodule import CaptchaDataModule
    drawn = []
    real = styles.draw_imagecaptcha
    monkeypatch.setattr(styles, "draw_imagecaptcha", lambda *a: drawn.append(a[3].__name__ if len(a) > 3 else "ImageCaptcha")
                        or real(*a))
    for shares, looks in (((0.0, 0.0), set()), ((1.0, 0.0), {"ImageCaptcha"}), ((0.0, 1.0), {"KaggleStyleCaptcha"})):
        drawn.clear()
        dm = CaptchaDataModule(dict(name="general", length=[1, 8], alphabet=ALNUM, width=128, height=48),
                               style="general", imagecaptcha_share=shares[0], kaggle_share=shares[1], num_workers=0)
        for i in range(20):
            dm.renderer.render(sample_rng(0, "train", i))
        assert set(drawn) == looks and len(drawn) == (20 if looks else 0)
    with pytest.raises(CaptchaError, match="add up to at most 1"):
        Renderer(128, 48, [1, 8], ALNUM, style="general", imagecaptcha_share=0.5, kaggle_share=0.6)
    cfg = compose_cfg("train", ["experiment=pretrain_general", "data.imagecaptcha_share=1.5"])
    with pytest.raises(CaptchaError, match=r"data.imagecaptcha_share=1.5: .*at most 1"):
        check_settings(cfg, "train")


def test_a_ctc_head_keeps_the_rows_of_the_characters_both_alphabets_read(tmp_path, capsys):
    assert ctc_rows("ab1", "1bz") == [0, 3, 2, None]
    pre = CaptchaModule(task("abc123"), **TINY_CTC)
    path = tmp_path / "pre.ckpt"
    torch.save({"hyper_parameters": dict(pre.hparams), "state_dict": pre.state_dict()}, path)
    run = CaptchaModule(task("31xa"), **TINY_CTC)
    fresh = run.net.heads.weight.detach().clone()
    start_from(run, path)
    w, old = run.net.heads.weight, pre.net.heads.weight
    for new_row, old_row in ((0, 0), (1, 6), (2, 4), (4, 1)):  # blank, '3', '1', 'a'
        assert torch.equal(w[new_row], old[old_row])
    assert torch.equal(w[3], fresh[3])  # 'x': never read by the checkpoint, starts fresh
    assert torch.equal(run.net.stem[0].weight, pre.net.stem[0].weight)
    assert "CTC head: 3 characters kept, 'x' fresh" in capsys.readouterr().out


def test_a_wider_network_starts_computing_what_the_narrow_one_did(tmp_path, capsys):
    pre = CaptchaModule(task("abc123"), **TINY_CTC)
    for m in pre.modules():  # BatchNorm statistics of their own, so that they must be carried over
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    path = tmp_path / "pre.ckpt"
    torch.save({"hyper_parameters": dict(pre.hparams), "state_dict": pre.state_dict()}, path)
    images = torch.rand(3, 3, 48, 64)
    for alphabet in ("abc123", "31xa"):  # the same head, and one mapped by character
        wide = CaptchaModule(task(alphabet), **{**TINY_CTC, "widths": [16, 24, 48, 40]})
        start_from(wide, path)
        assert "widened" in capsys.readouterr().out
        rows = [r for r in ctc_rows("abc123", alphabet) if r is not None]
        kept = [i for i, r in enumerate(ctc_rows("abc123", alphabet)) if r is not None]
        with torch.no_grad():
            expected = pre.net.eval()(images)[..., rows]
            got = wide.net.eval()(images)[..., kept]
        torch.testing.assert_close(got, expected)
        assert wide.net.heads.weight.shape == (len(alphabet) + 1, 40)


def test_reading_narrowed_to_some_characters_and_folded_case():
    alphabet = "1aA"  # CTC classes: blank, '1', 'a', 'A'
    steps = np.log(np.array([[[0.1, 0.2, 0.3, 0.4], [0.9, 0.05, 0.03, 0.02]]]))  # 'A' then blank
    assert restriction(alphabet, "ctc") is None
    digits = restriction(alphabet, "ctc", allowed="1")(steps)
    assert digits[0, 0].argmax() == 1 and np.isneginf(digits[0, 0, 2:]).all() and digits[0, 1].argmax() == 0
    folded = restriction(alphabet, "ctc", fold_case=True)(steps)
    assert folded[0, 0].argmax() == 2 and np.isclose(np.exp(folded[0, 0, 2]), 0.7)  # a + A
    positions = restriction("12a", "positions", allowed="12")(np.log(np.array([[[0.2, 0.3, 0.5]]])))
    assert positions[0, 0].argmax() == 1
    with pytest.raises(CaptchaError, match=r"alphabet='1z': the model never reads 'z'"):
        restriction(alphabet, "ctc", allowed="1z")


def test_a_reader_narrowed_to_digits_reads_only_digits(tmp_path):
    module = CaptchaModule(task(ALNUM), **TINY_CTC).eval()
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    images = np.random.default_rng(0).integers(0, 255, (16, 32, 64, 3), dtype=np.uint8)
    free = CaptchaReader.from_checkpoint(path, precision="32").read(list(images))
    digits = CaptchaReader.from_checkpoint(path, precision="32", allowed="digits").read(list(images))
    lower = CaptchaReader.from_checkpoint(path, precision="32", fold_case=True).read(list(images))
    assert any(not s.isdigit() for s in free if s)  # an untrained model reads letters too
    assert all(set(s) <= set("0123456789") for s in digits)
    assert all(s == s.lower() for s in lower)
    with pytest.raises(CaptchaError, match="give the characters in quotes"):
        CaptchaReader.from_checkpoint(path, precision="32", allowed=123)


def test_a_reader_kept_to_lengths_reads_only_those_lengths(tmp_path):
    from captcha_lit.commands.predict import predict
    torch.manual_seed(0)
    module = CaptchaModule(dict(task(ALNUM), length=[3, 4]), **TINY_CTC).eval()  # 8 CTC steps
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    images = np.random.default_rng(0).integers(0, 255, (16, 32, 64, 3), dtype=np.uint8)
    reader = CaptchaReader.from_checkpoint(path, precision="32")
    greedy = decode_logits(reader.logits(images), "ctc", ALNUM)[0]
    assert reader.read(list(images)) == greedy  # by default, the greedy readings, as in training and ddddocr exports
    assert any(not 3 <= len(s) <= 4 for s in greedy)  # this untrained model's: mostly one character
    read = CaptchaReader.from_checkpoint(path, precision="32", lengths="3-4").read(list(images))
    assert all(3 <= len(s) <= 4 for s in read)
    assert [r for g, r in zip(greedy, read) if 3 <= len(g) <= 4] == [g for g in greedy if 3 <= len(g) <= 4]
    kept = CaptchaReader.from_checkpoint(path, precision="32", lengths="5-6").read(list(images))
    assert all(5 <= len(s) <= 6 for s in kept)
    # through predict.py, as Hydra reads lengths=5 and lengths=[5,6]
    for i, image in enumerate(images[:4]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    for setting, shortest, longest in (("lengths=5", 5, 5), ("lengths=[5,6]", 5, 6)):
        predict(compose_cfg("predict", [f"ckpt={path}", f"data_dir={tmp_path}", setting, "progress=false",
                                        f"output={tmp_path / 'out.csv'}", "precision=32"]))
        got = [row.split(",")[1] for row in (tmp_path / "out.csv").read_text().splitlines()[1:]]
        assert len(got) == 4 and all(shortest <= len(g) <= longest for g in got)
    for bad in ("6-4", "0", "four", "4-5-6", "²", 4.5, True):
        with pytest.raises(CaptchaError, match=f"lengths={bad!r}: give the number of characters"):
            CaptchaReader.from_checkpoint(path, precision="32", lengths=bad)


def test_a_ctc_readers_test_time_views_never_move_the_text_sideways(tmp_path):
    # a CTC reader averages its views step by step: a view shifted or zoomed sideways is out of step
    torch.manual_seed(0)
    module = CaptchaModule(task(ALNUM), **TINY_CTC).eval()
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    reader = CaptchaReader.from_checkpoint(path, precision="32", tta=5)
    seen, model = [], reader.logits_fns[0]
    reader.logits_fns = [lambda x: (seen.append(x.copy()), model(x))[1]]
    # every row alike, every column different: only a sideways move or a zoom changes these images
    columns = np.repeat(np.random.default_rng(0).integers(0, 256, (2, 1, 64, 3), dtype=np.uint8), 32, axis=1)
    reader.logits(columns)
    assert len(seen) == 5 and all(np.array_equal(view, columns) for view in seen)
    with pytest.raises(CaptchaError, match="tta=6: must be a whole number from 1 .* to 5 for a ctc model"):
        CaptchaReader.from_checkpoint(path, precision="32", tta=6)


def test_the_packaged_general_reader_reads_unseen_captchas_zero_shot_narrowed_to_digits(tmp_path):
    from captcha_lit.commands.predict import predict
    from tests.helpers import write_csv
    renderer = Renderer(160, 60, 4, "0123456789")  # the captcha package's own style, at its own size
    images, labels = zip(*(renderer.render(sample_rng(11, "zero-shot", i)) for i in range(40)))
    reader = CaptchaReader.from_checkpoint("pretrained:general", precision="32", allowed="digits")
    read = reader.read([Image.fromarray(i) for i in images])  # scaled to the reader's 128x48
    assert all(set(r) <= set("0123456789") for r in read)
    assert sum(r == label for r, label in zip(read, labels)) >= 24  # 0.6; ddddocr reads digits-only styles far worse
    # the same through predict.py, on a labelled folder
    for i, (image, label) in enumerate(zip(images[:10], labels[:10])):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    write_csv(tmp_path, [(f"{i}.png", label) for i, label in enumerate(labels[:10])])
    metrics = predict(compose_cfg("predict", ["ckpt=pretrained:general", f"data_dir={tmp_path}", "alphabet=digits",
                                              f"output={tmp_path / 'out.csv'}", "progress=false", "precision=32"]))
    assert metrics["general"]["n"] == 10 and metrics["general"]["exact_match"] == np.mean(
        [r == label for r, label in zip(read[:10], labels[:10])])


def test_fresh_train_renders_new_images_every_epoch():
    from types import SimpleNamespace

    from captcha_lit.data.datamodule import CaptchaDataModule
    task = dict(name="general", length=[1, 8], alphabet=ALNUM, width=128, height=48)
    dm = CaptchaDataModule(task, num_train=8, num_val=4, batch_size=4, style="general", fresh_train=True,
                           num_workers=0)
    dm.setup()
    seen = []
    for epoch in (0, 1, 1, 2):
        dm.trainer = SimpleNamespace(current_epoch=epoch)
        dm.train_dataloader()
        seen.append(dm.train_set.images.copy())
    assert not np.array_equal(seen[0], seen[1]) and np.array_equal(seen[1], seen[2])
    assert not np.array_equal(seen[1], seen[3])
    # a run resumed at epoch 2 renders that epoch's set and no other
    resumed = CaptchaDataModule(task, num_train=8, num_val=4, batch_size=4, style="general", fresh_train=True,
                                num_workers=0)
    rendered = []
    real = resumed._rendered
    resumed._rendered = lambda size, stream: rendered.append(stream) or real(size, stream)
    resumed.setup()
    resumed.trainer = SimpleNamespace(current_epoch=2)
    resumed.train_dataloader()
    assert rendered == ["val", "test", "train2"] and np.array_equal(resumed.train_set.images, seen[3])


def test_auto_starts_from_the_general_reader_with_its_rows_of_the_users_characters(tmp_path, capsys):
    data = make_named_folder(tmp_path / "site", 20, 4, "0123abc", 96, 40)
    cfg = compose_cfg("train", ["experiment=auto", f"data.root={data}", "trainer=cpu", "trainer.max_steps=1",
                                "test=false", "data.num_workers=0", "int8=false", "trainer.enable_progress_bar=false"],
                      tmp_path / "run")
    train(cfg)
    out = capsys.readouterr().out
    assert "general.ckpt: 128 of 128 weights loaded; CTC head: 7 characters kept" in out
    general = torch.load(model_path("pretrained:general"), weights_only=True)["state_dict"]
    mine = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert mine["net.heads.weight"].shape == (8, 192)  # the blank and 0123abc
    # a step of fine-tuning later, each row is still nearest to the general reader's row of its character
    old_rows = general["net.heads.weight"].float()
    for i, c in enumerate("0123abc"):
        row = ALNUM.index(c) + 1
        assert (old_rows - mine["net.heads.weight"][i + 1].float()).norm(dim=1).argmin() == row
