"""Seeded captcha rendering: the `captcha` package's ImageCaptcha, the competition's look, or a
new style for every image (styles.py); (seed, stream, index) fixes each image (seeded.py)."""
import random
from pathlib import Path

import numpy as np
from captcha.image import ImageCaptcha

from ..errors import CaptchaError
from .seeded import captcha_drawing_from
from .styles import KaggleStyleCaptcha, draw_general
from .tasks import length_range

STYLES = {"imagecaptcha": ImageCaptcha, "kaggle": KaggleStyleCaptcha, "general": None}  # general: styles.py


def font_files(folder) -> tuple[str, ...]:
    """The TrueType/OpenType fonts in a folder (and below it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptchaError(f"data.fonts={folder}: no such folder")
    fonts = tuple(sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".ttf", ".otf")))
    if not fonts:
        raise CaptchaError(f"data.fonts={folder}: no .ttf or .otf files in it")
    return fonts


class Renderer:
    """Renders labelled captchas of a fixed size; picklable, so DataLoader workers can use it.
    length: a number or a [shortest, longest] range (each image draws its length uniformly).
    style: "imagecaptcha" (the package's own look), "kaggle" (closer to the competition's images) or
    "general" (a new style for every image, styles.py: what the general reader pretrains on).
    fonts: a folder of .ttf/.otf files (None: the package's own fonts).
    imagecaptcha_share, kaggle_share: with style "general", the shares of images drawn by the `captcha`
    package's ImageCaptcha, the generator of the competition's images, with the pool's fonts, and in the
    competition's look (both 0: a reader that never saw either)."""

    def __init__(self, width: int, height: int, length, alphabet: str, font_sizes=None,
                 style: str = "imagecaptcha", fonts=None, imagecaptcha_share: float = 0.25, kaggle_share: float = 0.0):
        if style not in STYLES:
            raise CaptchaError(f"data.style={style!r}: choose {' or '.join(STYLES)}")
        if not (0 <= imagecaptcha_share and 0 <= kaggle_share and imagecaptcha_share + kaggle_share <= 1):
            raise CaptchaError(f"data.imagecaptcha_share={imagecaptcha_share}, data.kaggle_share={kaggle_share}: "
                               f"give shares of at least 0 that add up to at most 1")
        self.width, self.height, self.lengths, self.alphabet = width, height, length_range(length), alphabet
        # None: the package's sizes (42, 50, 56), made for its 60-pixel high default, scaled down for lower images
        self.font_sizes = tuple(font_sizes) if font_sizes else tuple(round(s * min(1.0, height / 60)) for s in (42, 50, 56))
        self.fonts = font_files(fonts) if fonts else None
        self.style, self.imagecaptcha_share, self.kaggle_share = style, imagecaptcha_share, kaggle_share
        self._captcha = None

    def __getstate__(self):
        return {**self.__dict__, "_captcha": None}  # fonts are reloaded in each worker

    def render(self, rng: random.Random) -> tuple[np.ndarray, str]:
        """One (H, W, 3) uint8 image and its label, fully determined by `rng`."""
        if self.style == "general":
            return draw_general(rng, self.alphabet, self.lengths, self.width, self.height,
                                self.imagecaptcha_share, self.kaggle_share)
        if self._captcha is None:
            self._captcha = STYLES[self.style](self.width, self.height, fonts=self.fonts, font_sizes=self.font_sizes)
        lo, hi = self.lengths
        length = lo if lo == hi else rng.randint(lo, hi)  # no draw for fixed lengths: same images as before
        label = "".join(rng.choice(self.alphabet) for _ in range(length))
        with captcha_drawing_from(rng):
            img = self._captcha.generate_image(label)
        return np.asarray(img.convert("RGB"), dtype=np.uint8), label
