"""captcha-lit: ResNet captcha readers trained with PyTorch Lightning and configured with Hydra.

    from captcha_lit import CaptchaReader
    reader = CaptchaReader.from_checkpoint("outputs/.../checkpoints/last.ckpt")
    reader.read(["task1/abc.png", pil_image])  # -> ["7", "3"]
"""
from .reading.reader import CaptchaReader

__all__ = ["CaptchaReader"]
