import pytest
import torch

from captcha_lit.errors import CaptchaError
from captcha_lit.model.module import CaptchaModule
from captcha_lit.model.net import ResNet


def test_report_parameter_count():
    # the report's network with 36 classes and four heads
    assert sum(p.numel() for p in ResNet(4, 36).parameters()) == 3_578_292


def test_shapes_for_both_image_sizes():
    for task, length, w, h in (("task1", 1, 72, 72), ("task2", 2, 72, 72), ("task3", 4, 96, 72)):
        model = CaptchaModule(dict(name=task, length=length, width=w, height=h, alphabet="0123456789abcdefghijklmnopqrstuvwxyz"),
                              widths=(8, 8, 16, 16))
        images = torch.randint(0, 256, (3, 3, h, w), dtype=torch.uint8)
        assert model(images).shape == (3, length, 36)
        labels = model.predict_step(images, 0)
        assert len(labels) == 3 and all(len(s) == length for s in labels)


def test_ctc_head_reads_variable_lengths():
    model = CaptchaModule(dict(name="x", length=[4, 6], width=160, height=60, alphabet="0123456789"),
                          head="ctc", widths=(8, 8, 16, 16))
    images = torch.randint(0, 256, (3, 3, 60, 160), dtype=torch.uint8)
    assert model(images).shape == (3, 20, 11)  # one step per 8 pixels of width; class 0 is the blank
    targets = torch.tensor([[1, 2, 3, 4, -1, -1], [5, 5, 5, 5, 5, 5], [0, 1, 2, 3, 4, -1]])
    loss = model.loss(model(images), targets)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    with pytest.raises(CaptchaError, match="model.head=positions reads a fixed number of characters"):
        CaptchaModule(dict(name="x", length=[4, 6], width=160, height=60, alphabet="0123456789"))
    with pytest.raises(CaptchaError, match="gives? 4 columns, too few for 4 characters"):
        CaptchaModule(dict(name="x", length=4, width=32, height=60, alphabet="0123456789"), head="ctc")
    with pytest.raises(CaptchaError, match="model.head='rnn'"):
        CaptchaModule(dict(name="x", length=4, width=96, height=60, alphabet="0123456789"), head="rnn")


def test_hyperparameters_are_primitives():
    model = CaptchaModule(dict(name="task1", length=1, alphabet="0123456789", width=72, height=72),
                          optimizer=torch.optim.Adam)
    allowed = (str, int, float, bool, tuple, list, type(None))
    assert all(isinstance(v, allowed) for v in model.hparams.values())
    assert "optimizer" not in model.hparams


def test_positional_head_and_augmentation():
    model = CaptchaModule(dict(name="task3", length=4, width=96, height=72, alphabet="0123456789abcdefghijklmnopqrstuvwxyz"),
                          widths=(16, 16, 32, 32), columns=8, augment=1.0)
    images = torch.randint(0, 256, (5, 3, 72, 96), dtype=torch.uint8)
    assert model(images).shape == (5, 4, 36)
    assert model.net.heads.in_features == 32 * 8
    moved = model.augmented(images)
    assert moved.shape == images.shape and moved.dtype == torch.uint8 and not torch.equal(moved, images)


def test_low_res_trains_smaller_images_first_then_full_size():
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    model = CaptchaModule(dict(name="task3", length=4, width=96, height=72, alphabet="0123456789"),
                          widths=(16, 16, 16, 16), low_res=0.5, low_res_until=0.5, optimizer=torch.optim.Adam)
    sizes = []
    model.net.register_forward_pre_hook(lambda m, x: sizes.append(tuple(x[0].shape[2:])) if m.training else None)
    data = TensorDataset(torch.randint(0, 256, (8, 3, 72, 96), dtype=torch.uint8), torch.randint(0, 10, (8, 4)))
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(data, batch_size=2))
    assert sizes == [(36, 48), (36, 48), (72, 96), (72, 96)]


def test_low_res_is_checked():
    with pytest.raises(CaptchaError, match="model.low_res=0.1"):
        CaptchaModule(dict(name="task1", length=1, width=72, height=72, alphabet="0123456789"), low_res=0.1)
    # CTC at half size: 60 of 120 pixels would leave 8 columns for 5 characters; it trains 65 wide (9)
    model = CaptchaModule(dict(name="t", length=[2, 5], width=120, height=40, alphabet="0123456789"), head="ctc",
                          widths=(16, 16, 16, 16), strides=(2, 2, 2, (2, 1)), low_res=0.5)
    assert model.low_res_size == (20, 65)
    images = torch.randint(0, 256, (2, 3, 40, 120), dtype=torch.uint8)
    assert model.train()(model.augmented(images, model.low_res_size)).shape == (2, 9, 11)


def test_training_figures_are_the_epoch_means_of_the_steps():
    # lr=0 leaves the weights as they are, so each batch's loss and readings can be recomputed here
    # (the second epoch reads the same batches in the same order, so it logs the same figures).
    # The loss counts every batch; exact match and char_acc every log_every_n_steps-th (here 0 and 2)
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = CaptchaModule(dict(name="task2", length=2, width=24, height=24, alphabet="0123"),
                          widths=(16, 16, 16, 16), optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    images, targets = torch.randint(0, 256, (10, 3, 24, 24), dtype=torch.uint8), torch.randint(0, 4, (10, 2))
    targets[:2] = model.train()(images[:4]).argmax(-1)[:2]  # some right readings, in batches 0 and 2
    targets[8] = model(images[8:])[0].argmax(-1)
    losses, exact, chars = [], [], []
    for i in range(0, 10, 4):  # batches of 4, 4 and 2, in order
        logits = model(images[i:i + 4])
        losses.append(model.loss(logits, targets[i:i + 4]).item() * len(logits))
        e, c = model.scores(logits, targets[i:i + 4])
        exact.append(e.sum().item()), chars.append(c.sum().item())
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=2)
    trainer.fit(model, DataLoader(TensorDataset(images, targets), batch_size=4))
    got = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert got["train/loss"] == pytest.approx(sum(losses) / 10, rel=1e-5)
    assert got["train/exact_match"] == pytest.approx((exact[0] + exact[2]) / 6) and 0 < got["train/exact_match"] < 1
    assert got["train/char_acc"] == pytest.approx((chars[0] + chars[2]) / 6)
    assert (model.train_images, model.train_scored) == (10, 6)  # the second epoch's own (the same batches again)
