"""The LightningModule: the ResNet, its loss, metrics and optimiser."""
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassExactMatch

from .alphabet import check_alphabet, decode
from .net import ResNet


class CaptchaModule(pl.LightningModule):
    """Reads `length` characters of `alphabet` from uint8 (B, 3, height, width) images.

    Every constructor argument except the optimizer and scheduler factories is a primitive
    and is saved in the checkpoint, so a checkpoint alone rebuilds the model and its
    preprocessing.
    """

    def __init__(self, task: str = "task1", length: int = 1, alphabet: str = "0123456789",
                 width: int = 72, height: int = 72,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),  # maps [0, 1] pixels to [-1, 1]
                 widths=(36, 72, 144, 288), strides=(1, 2, 2, 2), blocks_per_stage: int = 2, columns: int = 0,
                 label_smoothing: float = 0.0, augment: float = 0.0, ema: float = 0.0, channels_last: bool = True,
                 optimizer=None, scheduler=None):
        super().__init__()
        check_alphabet(alphabet)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net = ResNet(length, len(alphabet), tuple(widths), tuple(strides), blocks_per_stage, columns)
        # NHWC convolutions: much faster with mixed precision on CPU and GPU. Not for stems
        # narrower than 16 channels: oneDNN's bf16 channels-last backward crashes on those (torch 2.14)
        self.channels_last = channels_last and min(widths) >= 16
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # ema > 0: an exponential moving average of the weights (and BN statistics), updated after
        # every step, is what validation, test, prediction and export use
        self.ema_net = None
        if ema:
            self.ema_net = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True)
            self.ema_net.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        # validate_args=False: the inputs are argmaxes and encoded labels, always in range, and the
        # checks would wait for the GPU (a device-to-host sync) on every training step
        metrics = MetricCollection({
            "exact_match": MulticlassExactMatch(len(alphabet), validate_args=False),  # whole string right
            "char_acc": MulticlassAccuracy(len(alphabet), average="micro", validate_args=False),  # single characters
        })
        self.train_metrics, self.val_metrics, self.test_metrics = (
            metrics.clone(prefix=f"{stage}/") for stage in ("train", "val", "test"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) images -> (B, length, classes) logits."""
        x = (images.float() / 255 - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net = self.net if self.training or self.ema_net is None else self.ema_net.module
        return net(x)

    def augmented(self, images: torch.Tensor) -> torch.Tensor:
        """Random small rotations, shifts and scalings of a uint8 batch, on its device; `augment`
        scales their strength (1.0: up to 6 degrees, 6 % shift, 8 % zoom)."""
        s, b = self.hparams.augment, images.shape[0]
        u = lambda: torch.rand(b, device=images.device) * 2 - 1  # uniform in [-1, 1] per image
        angle, zoom = u() * s * 0.105, 1 + u() * s * 0.08
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, u() * s * 0.12], 1), torch.stack([sin, cos, u() * s * 0.12], 1)], 1)
        grid = F.affine_grid(theta, images.shape, align_corners=False)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.round().clamp(0, 255).to(torch.uint8)

    def loss(self, logits, targets):
        # sum over the heads of each head's mean cross entropy
        per_char = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                   label_smoothing=self.hparams.label_smoothing)
        return per_char * self.hparams.length

    def _step(self, batch, stage: str):
        images, targets = batch
        logits = self(images)
        loss = self.loss(logits, targets)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits.argmax(-1), targets)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "test", on_step=False, on_epoch=True, batch_size=len(images),
                 sync_dist=True)  # averaged over DDP processes; a no-op on one device
        self.log_dict(metrics, prog_bar=stage == "val", on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    def training_step(self, batch, batch_idx):
        if self.hparams.augment > 0:
            batch = (self.augmented(batch[0]), batch[1])
        return self._step(batch, "train")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema_net is not None:
            self.ema_net.update_parameters(self.net)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx) -> list[str]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return [decode(p, self.hparams.alphabet) for p in self(images).argmax(-1).tolist()]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.net.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
