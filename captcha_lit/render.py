"""Seeded ImageCaptcha rendering.

captcha 0.7 draws every random number from the `secrets` module, which no seed reaches. We
render with the package's own code but point its `secrets` at a seeded generator for the
duration of one image, so that (seed, index) always gives the same picture and label.
"""
import hashlib
import random
import threading

import numpy as np
from captcha import image as captcha_image
from captcha.image import ImageCaptcha

_swap_lock = threading.Lock()  # the swap is module-wide: one render at a time per process


class _SeededSecrets(random.Random):
    """The three functions of `secrets` that captcha uses, backed by a seeded Random."""

    def randbelow(self, n: int) -> int:
        return self.randrange(n)

    def randbits(self, k: int) -> int:
        return self.getrandbits(k)


def sample_rng(seed: int, stream: str, index: int) -> random.Random:
    """An independent generator for image `index` of `stream` (e.g. "train", "val")."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{index}".encode(), digest_size=8).digest()
    return _SeededSecrets(int.from_bytes(digest, "little"))


class Renderer:
    """Renders labelled captchas of a fixed size; picklable, so DataLoader workers can use it."""

    def __init__(self, width: int, height: int, length: int, alphabet: str, font_sizes=None):
        self.width, self.height, self.length, self.alphabet = width, height, length, alphabet
        self.font_sizes = tuple(font_sizes) if font_sizes else None
        self._captcha = None

    def __getstate__(self):
        return {**self.__dict__, "_captcha": None}  # fonts are reloaded in each worker

    def render(self, rng: random.Random) -> tuple[np.ndarray, str]:
        """One (H, W, 3) uint8 image and its label, fully determined by `rng`."""
        if self._captcha is None:
            self._captcha = ImageCaptcha(self.width, self.height, font_sizes=self.font_sizes)
        label = "".join(rng.choice(self.alphabet) for _ in range(self.length))
        with _swap_lock:
            saved, captcha_image.secrets = captcha_image.secrets, rng
            try:
                img = self._captcha.generate_image(label)
            finally:
                captcha_image.secrets = saved
        return np.asarray(img.convert("RGB"), dtype=np.uint8), label
