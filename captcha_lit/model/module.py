"""The LightningModule: the ResNet, its loss, metrics and optimiser."""
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import copy

from torchmetrics import MeanMetric, MetricCollection

from ..data.alphabet import PAD, ctc_keep, decode
from ..errors import CaptchaError
from .net import ResNet, normalise
from .spec import MEAN, STD, ModelSpec

# the network's own hyperparameters (the rest of a checkpoint's are its ModelSpec)
NETWORK = ("widths", "strides", "blocks_per_stage", "columns", "label_smoothing", "augment", "ema", "channels_last",
           "low_res", "low_res_until")


def output_width(width: int, strides) -> int:
    """Columns left after the network's strided 3x3 convolutions (padding 1). A stride is a number,
    or [height, width] to downsample one axis only."""
    for s in strides:
        width = (width - 1) // (s[1] if isinstance(s, (list, tuple)) else s) + 1
    return width


def greedy_decode(logits: torch.Tensor, head: str) -> torch.Tensor:
    """(B, steps, classes) logits -> (B, steps) character indices, padded with PAD. CTC: merge
    repeated steps, drop blanks (class 0), shift the rest down by one."""
    steps = logits.argmax(-1)
    if head == "positions":
        return steps
    keep = ctc_keep(steps)
    out = torch.full_like(steps, PAD)
    rows = torch.arange(len(steps), device=steps.device)[:, None].expand_as(steps)
    out[rows[keep], (keep.cumsum(1) - 1)[keep]] = steps[keep] - 1
    return out


def compared(logits: torch.Tensor, targets: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy readings and targets padded with PAD to one width: (preds == targets).all(1) is
    exact match per image."""
    preds = greedy_decode(logits, head)
    width = max(preds.shape[1], targets.shape[1])
    return tuple(F.pad(t, (0, width - t.shape[1]), value=PAD) for t in (preds, targets))


def low_res_size(width: int, height: int, low_res: float, strides, min_columns: int) -> tuple[int, int]:
    """(height, width) of the images trained on with model.low_res: that fraction of each side,
    but never so narrow that the network leaves fewer than min_columns columns (CTC needs 2N-1)."""
    w = round(width * low_res)
    while w < width and output_width(w, strides) < min_columns:
        w += 1
    return round(height * low_res), w


class CaptchaModule(pl.LightningModule):
    """Reads `length` characters of `alphabet` from uint8 (B, 3, height, width) images.

    Every constructor argument except the optimizer and scheduler factories is a primitive
    and is saved in the checkpoint, so a checkpoint alone rebuilds the model and its
    preprocessing.
    """

    def __init__(self, task, head: str = "positions", mean=MEAN, std=STD,
                 widths=(36, 72, 144, 288), strides=(1, 2, 2, 2), blocks_per_stage: int = 2, columns: int = 0,
                 label_smoothing: float = 0.0, augment: float = 0.0, ema: float = 0.0, channels_last: bool = True,
                 low_res: float = 1.0, low_res_until: float = 0.75, optimizer=None, scheduler=None):
        network = {k: v for k, v in locals().items() if k in NETWORK}
        super().__init__()
        self.spec = spec = ModelSpec.of(task, head, mean, std)  # what it reads: checked once, there
        hi = spec.steps
        if not 0.25 <= low_res <= 1 or not 0 <= low_res_until <= 1:
            raise CaptchaError(f"model.low_res={low_res}, model.low_res_until={low_res_until}: low_res must be "
                               f"from 0.25 to 1 (1: full size throughout), low_res_until from 0 to 1")
        if len(strides) != len(widths):  # their types and ranges: commands/settings.py
            raise CaptchaError(f"model.widths={list(widths)}, model.strides={list(strides)}: one stride per stage")
        steps = output_width(spec.width, strides)
        if head == "ctc" and steps < 2 * hi - 1:  # a blank step must fit between two equal characters
            raise CaptchaError(f"model.head=ctc: {spec.width}-pixel wide images give {steps} columns, too few for "
                               f"{hi} characters (needs {2 * hi - 1}); use wider images or smaller model.strides")
        # flat hyperparameters, as every checkpoint has held them: the spec's values and the network's
        self.save_hyperparameters({**spec.values(), **network})
        width, height, alphabet = spec.width, spec.height, spec.alphabet
        self.low_res_size = low_res_size(width, height, low_res, strides, 2 * hi - 1 if head == "ctc" else 1)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net = ResNet(hi, len(alphabet), tuple(widths), tuple(strides), blocks_per_stage, columns, head)
        # NHWC convolutions: much faster with mixed precision on CPU and GPU. Not for stems
        # narrower than 16 channels: oneDNN's bf16 channels-last backward crashes on those (torch 2.14)
        self.channels_last = channels_last and min(widths) >= 16
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # ema > 0: an exponential moving average of the weights (and BN statistics), updated after
        # every step, is what validation, test, prediction and export use. See update_ema for its warm-up
        self.ema_net = None
        self.ema_step = 0
        if ema:
            self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        # exact_match: the whole string right; char_acc: the share of a label's characters read right
        # at their position. Means over images; nan_strategy="disable" skips a NaN check that would
        # wait for the GPU (a device-to-host sync) on every step
        metrics = MetricCollection({"exact_match": MeanMetric(nan_strategy="disable"),
                                    "char_acc": MeanMetric(nan_strategy="disable")})
        self.val_metrics, self.test_metrics = (metrics.clone(prefix=f"{stage}/") for stage in ("val", "test"))
        # training sums its figures on the device, (loss, exact matches, char_acc) times images, and logs
        # their means once an epoch: per step, self.log and torchmetrics cost about 2 ms of Python, which
        # is most of what Lightning adds to a GPU step waiting on the host (bench/README.md). The loss
        # counts every batch, exact match and char_acc every trainer.log_every_n_steps-th (a dozen kernels).
        # A float32 tensor, not a buffer: DDP would overwrite a buffer with process 0's, and a
        # bf16-true/16-true run would cast it
        self.train_sums = torch.zeros(3)
        self.train_images = self.train_scored = 0
        self.low_res_steps = 0  # the steps trained at low_res_size, set when training starts

    @classmethod
    def from_hparams(cls, hparams: dict, where: str) -> "CaptchaModule":
        """The module a checkpoint's hyperparameters describe (its ModelSpec and network)."""
        spec = ModelSpec.read(hparams, where)
        return cls(spec.task_config(), spec.head, spec.mean, spec.std, **{k: hparams[k] for k in NETWORK if k in hparams})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) images -> (B, length, classes) logits."""
        x = normalise(images, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net = self.net if self.training or self.ema_net is None else self.ema_net
        return net(x)

    def augmented(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Random small rotations, shifts and scalings of a uint8 batch, on its device; `augment`
        scales their strength (1.0: up to 6 degrees, 6 % shift, 8 % zoom; 0: none). `size`
        (height, width) resamples the result to that size in the same pass."""
        s, (b, c, h, w) = self.hparams.augment, images.shape
        h, w = size or (h, w)
        u = lambda: torch.rand(b, device=images.device) * 2 - 1  # uniform in [-1, 1] per image
        angle, zoom = u() * s * 0.105, 1 + u() * s * 0.08
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, u() * s * 0.12], 1), torch.stack([sin, cos, u() * s * 0.12], 1)], 1)
        grid = F.affine_grid(theta, (b, c, h, w), align_corners=False)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.round().clamp(0, 255).to(torch.uint8)

    def loss(self, logits, targets):
        if self.spec.head == "ctc":  # per image, summed over its characters like the heads' loss
            log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (steps, B, classes)
            lengths = (targets != PAD).sum(1)
            return F.ctc_loss(log_probs, targets[targets != PAD] + 1, torch.full_like(lengths, log_probs.shape[0]),
                              lengths, blank=0, reduction="sum", zero_infinity=True) / len(targets)
        # sum over the heads of each head's mean cross entropy
        per_char = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                   label_smoothing=self.hparams.label_smoothing)
        return per_char * targets.shape[1]

    def scores(self, logits, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: exact match (0/1) and the share of its characters read right at their position."""
        preds, targets = compared(logits, targets, self.spec.head)
        valid, right = targets != PAD, preds == targets
        return right.all(1).float(), (right & valid).sum(1) / valid.sum(1)

    def _step(self, batch, stage: str):
        images, targets = batch
        logits = self(images)
        loss = self.loss(logits, targets)
        metrics = getattr(self, f"{stage}_metrics")
        exact, chars = self.scores(logits, targets)
        metrics["exact_match"].update(exact)
        metrics["char_acc"].update(chars)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", on_step=False, on_epoch=True, batch_size=len(images),
                 sync_dist=True)  # averaged over DDP processes; a no-op on one device
        self.log_dict(metrics, prog_bar=stage == "val", on_step=False, on_epoch=True, batch_size=len(images))

    def on_train_start(self):
        # low_res < 1: the first low_res_until of the steps train on smaller images, which cost
        # low_res^2 of the compute (the network pools globally, so any size fits); the rest at full
        # size, where the model is validated and used
        if self.hparams.low_res < 1:
            self.low_res_steps = self.hparams.low_res_until * self.trainer.estimated_stepping_batches
        self.ema_step = self.global_step  # the step the weight average last moved at (restored on resume)

    def on_train_epoch_start(self):
        self.train_sums = torch.zeros(3, device=self.device)
        self.train_images = self.train_scored = 0

    def training_step(self, batch, batch_idx):
        images, targets = batch
        low = self.global_step < self.low_res_steps
        if self.hparams.augment > 0 or low:
            images = self.augmented(images, self.low_res_size if low else None)
        logits = self(images)
        loss = self.loss(logits, targets)
        self.train_sums[0].add_(loss.detach(), alpha=len(images))
        self.train_images += len(images)
        every = max(1, self._trainer.log_every_n_steps) if self._trainer else 1  # 0: no step logging, still scored
        if batch_idx % every == 0:
            with torch.no_grad():
                exact, chars = self.scores(logits, targets)
                self.train_sums[1:] += torch.stack([exact.sum(), chars.sum()])
            self.train_scored += len(images)
        return loss

    def on_train_epoch_end(self):
        counts = torch.tensor([self.train_images, self.train_scored], dtype=torch.float32, device=self.device)
        sums = self.trainer.strategy.reduce(torch.cat([self.train_sums, counts]), reduce_op="sum")  # over DDP processes
        loss, exact, chars, images, scored = sums.tolist()  # one device-to-host copy an epoch
        # sync_dist: the figures are already equal on every process; it spares Lightning's DDP warning
        if images:
            self.log("train/loss", loss / images, prog_bar=True, sync_dist=True)
        if scored:
            self.log_dict({"train/exact_match": exact / scored, "train/char_acc": chars / scored}, sync_dist=True)

    @torch.no_grad()
    def update_ema(self, step: int):
        """Moves the average towards the current weights. The decay warms up as (1 + step) / (10 + step)
        (as timm's and TensorFlow's averages do) up to `ema`, so early on the average follows the
        weights instead of holding on to the random initialisation for 1 / (1 - ema) steps."""
        decay = min(self.hparams.ema, (1 + step) / (10 + step))
        ema, now = list(self.ema_net.state_dict().values()), list(self.net.state_dict().values())
        floats = [(e, n) for e, n in zip(ema, now) if e.is_floating_point()]
        torch._foreach_lerp_([e for e, _ in floats], [n for _, n in floats], 1 - decay)
        for e, n in zip(ema, now):
            if not e.is_floating_point():  # BatchNorm's batch counters
                e.copy_(n)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # once per optimizer step: under trainer.accumulate_grad_batches most batches only add gradients
        if self.ema_net is not None and self.global_step != self.ema_step:
            self.ema_step = self.global_step
            self.update_ema(self.global_step - 1)  # global_step already counts this step

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx) -> list[str]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return [decode(p, self.spec.alphabet) for p in greedy_decode(self(images), self.spec.head).tolist()]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.net.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
