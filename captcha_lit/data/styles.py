"""A parametric renderer of many captcha styles, for pretraining the general reader.

Each image draws its own style: canvas size, fonts (one or one per character), size, spacing and
overlap, rotation and shear, colours (one for the text or one per character), background (plain,
gradient, blotchy texture, a tile per character in any colour with a glyph that contrasts with it,
light or dark), lines, curves and strokes as thick as the glyphs' through the text, dots, rings and
snow, a wave or perspective warp, blur, pixel noise and JPEG artefacts. A share of the images
(`imagecaptcha_share`) is drawn by the `captcha` package's ImageCaptcha with a random font of the pool,
and another (`kaggle_share`, none by default) in the competition's look with the package's own fonts.
Everything comes from the generator it is given, so (seed, stream, index) fixes the image.

It draws none of the generators the few-shot bench tests on (claptcha, wheezy.captcha,
multicolorcaptcha, bench/make_style_sets.py's plain style) nor their fonts: the general reader is
measured on styles it never saw."""
import io
import random
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np
from captcha import image as captcha_image
from captcha.image import ImageCaptcha
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .alphabet import ALPHANUMERIC
from .seeded import captcha_drawing_from

# font packages of the registry (pip install -e ".[pretrain]"); fonts whose lower and upper case
# look alike (Amatic SC) would teach the reader to guess the case
FONT_PACKAGES = ("font-roboto", "font-source-sans-pro", "font-source-serif-pro", "font-caladea", "font-fredoka-one",
                 "font-hanken-grotesk", "font-manrope", "font-intuitive", "font-fjallaone", "font-lato")
# the system's fonts (Debian's fonts-* packages), where installed; docs/results.md lists those the shipped
# reader saw
SYSTEM_FONTS = Path("/usr/share/fonts")
# families left out: GNU FreeFont is the few-shot bench's (bench/make_style_sets.py), the rest draw other
# symbols in place of letters
LEFT_OUT = ("Free", "Symbol", "D050000L", "Dingbat", "Keyboard", "Math")
PER_FAMILY = 4  # font files kept of a family (its weights and slants), so a family of 50 weights weighs as 4
ALNUM = ALPHANUMERIC + ALPHANUMERIC[10:].upper()


def _shape(mask) -> np.ndarray:
    """A glyph's mask cropped to its ink and scaled to 12x12, as booleans."""
    img = Image.frombytes("L", mask.size, bytes(mask)).crop(mask.getbbox()).resize((12, 12), Image.BILINEAR)
    return np.asarray(img) > 100


def _draws_letters(font: ImageFont.FreeTypeFont) -> bool:
    """Every digit and letter has a glyph of its own, and lower case is not upper case redrawn smaller
    (small caps, unicase): otherwise the reader would learn to guess."""
    masks = {c: font.getmask(c) for c in ALNUM}  # each glyph drawn once
    missing = bytes(font.getmask("\U0010FFFD"))  # a private-use code point: the font's "no glyph" box
    if any(not m.getbbox() or bytes(m) == missing for m in masks.values()):
        return False
    alike = [(a & b).sum() / max(1, (a | b).sum()) for a, b in
             ((_shape(masks[c]), _shape(masks[c.upper()])) for c in "abdeghnqrt")]
    return float(np.mean(alike)) < 0.7


@lru_cache(maxsize=1)
def font_pool() -> tuple[str, ...]:
    """The .ttf/.otf files of the font packages and system fonts that are installed and draw every digit
    and letter in both cases, at most PER_FAMILY of a family, and the captcha package's own font: never empty."""
    import captcha
    files = set()
    for package in FONT_PACKAGES:
        try:
            found = metadata.files(package) or []
        except metadata.PackageNotFoundError:
            continue
        files |= {str(f.locate()) for f in found if str(f).lower().endswith(".ttf")}
    if SYSTEM_FONTS.is_dir():
        files |= {str(p) for p in SYSTEM_FONTS.rglob("*") if p.suffix.lower() in (".ttf", ".otf")}
    families = {}
    for path in sorted(files):
        try:
            font = ImageFont.truetype(path, 32)
        except OSError:  # a font FreeType cannot read
            continue
        family = font.getname()[0]
        if not any(w in family for w in LEFT_OUT) and "ExtraLight" not in path and _draws_letters(font):
            families.setdefault(family, []).append(path)
    pool = {str(Path(captcha.__file__).parent / "data" / "DroidSansMono.ttf")}
    for paths in families.values():  # PER_FAMILY spread over the family's sorted files
        pool |= {paths[i * len(paths) // PER_FAMILY] for i in range(min(PER_FAMILY, len(paths)))}
    return tuple(sorted(pool))


@lru_cache(maxsize=4096)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _colour(rng: random.Random, luminance: tuple[int, int]) -> tuple[int, int, int]:
    """A random colour whose mean channel lies in `luminance`."""
    target = rng.randint(*luminance)
    spread = rng.choice((0, 30, 80))  # grey, tinted or saturated
    c = [min(255, max(0, target + rng.randint(-spread, spread))) for _ in range(3)]
    return tuple(c)


def _labels(rng: random.Random, alphabet: str, length: int) -> str:
    """Characters drawn from a subset of the alphabet that real captchas use: digits only, one case
    with digits, or everything."""
    subsets = [s for s in ("".join(c for c in alphabet if c.isdigit()),
                           "".join(c for c in alphabet if c.isdigit() or c.islower()),
                           "".join(c for c in alphabet if c.isdigit() or c.isupper()),
                           alphabet) if s]
    pool = rng.choices(subsets, weights=[1, 1.5, 1.5, 3][-len(subsets):])[0]
    return "".join(rng.choice(pool) for _ in range(length))


def _background(rng: random.Random, w: int, h: int, dark: bool) -> Image.Image:
    lum = (0, 90) if dark else (170, 255)
    kind = rng.choice(("plain", "plain", "gradient", "texture"))
    if kind == "plain":
        return Image.new("RGB", (w, h), _colour(rng, lum))
    if kind == "gradient":
        a, b = np.array(_colour(rng, lum), float), np.array(_colour(rng, lum), float)
        t = np.linspace(0, 1, w if rng.random() < 0.7 else h)
        ramp = a + (b - a) * t[:, None]
        grid = np.broadcast_to(ramp[None], (h, w, 3)) if len(t) == w else np.broadcast_to(ramp[:, None], (h, w, 3))
        return Image.fromarray(grid.astype(np.uint8))
    # blotches: coarse random colours blown up smoothly
    nr = np.random.default_rng(rng.getrandbits(32))
    base = np.array(_colour(rng, lum), float)
    coarse = base + nr.normal(0, rng.choice((15, 30, 45)), (rng.randint(2, 6), rng.randint(3, 12), 3))
    img = Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return img


def _glyph(rng: random.Random, char: str, font, colour, outline: bool) -> Image.Image:
    """One character on a transparent tile, rotated and sheared."""
    left, top, right, bottom = font.getbbox(char)
    pad = max(2, font.size // 6)
    tile = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    if outline:
        draw.text((pad - left, pad - top), char, font=font, fill=(0, 0, 0, 0), stroke_width=max(1, font.size // 18),
                  stroke_fill=colour + (255,))
    else:
        draw.text((pad - left, pad - top), char, font=font, fill=colour + (255,))
    shear = rng.uniform(-0.3, 0.3) if rng.random() < 0.3 else 0.0
    if shear:
        w, h = tile.size
        tile = tile.transform((w + int(abs(shear) * h), h), Image.AFFINE,
                              (1, shear, -abs(shear) * h if shear > 0 else 0, 0, 1, 0), Image.BILINEAR)
    # mostly upright; sometimes each character turned hard (within +-70 degrees: 6 and 9 stay apart)
    angle = max(-70.0, min(70.0, rng.gauss(0, rng.choice((0, 8, 18, 30, 45)))))
    if angle:
        tile = tile.rotate(angle, Image.BILINEAR, expand=True)
    return tile


def _curve(rng: random.Random, w: int, h: int) -> list[tuple[float, float]]:
    """A line, wave or arc across the image as a polyline."""
    x0, x1 = rng.uniform(-0.1, 0.3) * w, rng.uniform(0.7, 1.1) * w
    y0, y1 = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * h
    amp, freq, phase = rng.uniform(0, 0.3) * h, rng.uniform(0.5, 3), rng.uniform(0, 6.3)
    t = np.linspace(0, 1, 24)
    ys = y0 + (y1 - y0) * t + amp * np.sin(2 * np.pi * freq * t + phase)
    return list(zip((x0 + (x1 - x0) * t).tolist(), ys.tolist()))


def _warp(rng: random.Random, img: np.ndarray) -> np.ndarray:
    """A wave displacement of rows and columns."""
    h, w, _ = img.shape
    ax, ay = rng.uniform(0, 0.06) * h, rng.uniform(0, 0.12) * h
    fx, fy = rng.uniform(0.5, 2.5) / w, rng.uniform(0.3, 1.5) / h
    px, py = rng.uniform(0, 6.3), rng.uniform(0, 6.3)
    ys, xs = np.mgrid[0:h, 0:w]
    sx = np.clip(xs + ax * np.sin(2 * np.pi * fy * ys + px), 0, w - 1).astype(np.intp)
    sy = np.clip(ys + ay * np.sin(2 * np.pi * fx * xs + py), 0, h - 1).astype(np.intp)
    return img[sy, sx]


def draw_parametric(rng: random.Random, label: str, fonts: tuple[str, ...]) -> Image.Image:
    """One captcha of `label` in a style drawn from `rng`, at a size drawn from it too."""
    h = rng.randint(30, 72)
    # glyphs filling most of the height, or one in five small ones with room to wander up and down
    small = rng.random() < 0.2
    size = max(10, int(h * (rng.uniform(0.3, 0.55) if small else rng.uniform(0.55, 0.9))))
    per_char_font = rng.random() < 0.3
    image_font = rng.choice(fonts)
    dark = rng.random() < 0.15  # light text on a dark background
    text_lum = (170, 255) if dark else (0, rng.choice((90, 130)))
    per_char_colour = rng.random() < 0.4
    colour = _colour(rng, text_lum)
    outline = rng.random() < 0.05
    tiles = rng.random() < 0.15  # a tile of its own colour behind each character, the glyph contrasting with it
    tile_colours = [_colour(rng, (0, 255)) for _ in label] if tiles else []
    glyphs = []
    for i, char in enumerate(label):
        font = _font(rng.choice(fonts) if per_char_font else image_font, max(10, int(size * rng.uniform(0.85, 1.15))))
        if tiles:  # light text on a dark tile, dark text on a light one
            fill = _colour(rng, (0, 90) if sum(tile_colours[i]) > 3 * 128 else (170, 255))
        else:
            fill = _colour(rng, text_lum) if per_char_colour else colour
        glyphs.append(_glyph(rng, char, font, fill, outline))
    spacing = rng.uniform(-0.22, 0.25) * size  # negative: characters overlap
    if tiles:
        spacing = abs(spacing)  # tiles side by side
    text_w = int(sum(g.width for g in glyphs) + spacing * (len(glyphs) - 1))
    margin = int(rng.uniform(0.05, 0.5) * size) + 2
    w = max(text_w + 2 * margin, int(h * 0.8))
    img = _background(rng, w, h, dark)
    draw = ImageDraw.Draw(img)
    x = (w - text_w) / 2
    for g, tile in zip(glyphs, tile_colours or [None] * len(glyphs)):
        room = max(0.15 * h, (h - g.height) / 2 * 0.8) if small else 0.15 * h
        y = (h - g.height) / 2 + rng.uniform(-room, room)
        if tile is not None:
            box = (x - spacing / 2, 0, x + g.width + spacing / 2, h)
            draw.rectangle(box, fill=tile)
            for _ in range(rng.choice((0, 1, 2))):  # short lines inside the tile
                draw.line([(rng.uniform(box[0], box[2]), rng.uniform(0, h)) for _ in range(2)],
                          fill=_colour(rng, (0, 255)), width=rng.choice((1, 2)))
        img.paste(g, (int(x), int(y)), g)
        x += g.width + spacing
    n_lines = rng.choice((0, 0, 1, 2, 3, 5))
    for _ in range(n_lines):
        fill = colour if rng.random() < 0.5 else _colour(rng, text_lum if rng.random() < 0.7 else (60, 200))
        # mostly hairlines; sometimes a stroke as thick as the glyphs', in their colour, through the text
        thick = rng.random() < 0.15
        draw.line(_curve(rng, w, h), fill=colour if thick else fill,
                  width=max(2, size // 9) if thick else rng.choice((1, 1, 2, 3)))
    n_dots = rng.choice((0, 0, 30, 100, 300))
    for _ in range(n_dots):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.choice((0.5, 1, 1.5))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_colour(rng, (0, 255)))
    for _ in range(rng.choice((0, 0, 0, 3, 8))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, h / 3)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=_colour(rng, (0, 255)))
    if rng.random() < 0.1:  # snow: grey specks over everything
        a = np.asarray(img).copy()
        specks = np.random.default_rng(rng.getrandbits(32)).random((h, w)) < rng.uniform(0.02, 0.12)
        a[specks] = rng.randint(60, 200)
        img = Image.fromarray(a)
    if rng.random() < 0.35:
        img = Image.fromarray(_warp(rng, np.asarray(img)))
    if rng.random() < 0.2:  # perspective: a random quadrilateral of the image stretched to the whole
        j = lambda span: rng.uniform(-0.08, 0.08) * span
        quad = (j(w), j(h), j(w), h + j(h), w + j(w), h + j(h), w + j(w), j(h))
        img = img.transform((w, h), Image.QUAD, quad, Image.BILINEAR, fillcolor=img.getpixel((0, 0)))
    if rng.random() < 0.25:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    if rng.random() < 0.2:
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(4, 20), (h, w, 3))
        img = Image.fromarray((np.asarray(img, float) + noise).clip(0, 255).astype(np.uint8))
    if rng.random() < 0.25:
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=rng.randint(15, 75))
        img = Image.open(buffer).convert("RGB")
    return img


class KaggleStyleCaptcha(ImageCaptcha):
    """ImageCaptcha drawn like the competition's images: every character in its own colour,
    multicoloured cross-shaped noise and one thin dark curve, on a pale background. Its
    randomness also comes from captcha's `secrets`, so it is seeded the same way."""

    def _draw_character(self, c, draw, color):
        return super()._draw_character(c, draw, _secret_colour(96, 200) + (255,))  # a new colour per character

    def generate_image(self, chars, bg_color=None, fg_color=None):
        im = self.create_captcha_image(chars, None, _secret_colour(238, 255))
        draw = ImageDraw.Draw(im)
        w, h = im.size
        for _ in range(captcha_image.secrets.randbelow(30) + 30):  # small "x" crosses, each its own colour
            x, y, r = captcha_image.secrets.randbelow(w), captcha_image.secrets.randbelow(h), 1
            colour = _secret_colour(0, 255)
            draw.line(((x - r, y - r), (x + r, y + r)), fill=colour, width=1)
            draw.line(((x - r, y + r), (x + r, y - r)), fill=colour, width=1)
        self.create_noise_curve(im, _secret_colour(20, 140))
        return im


def _secret_colour(low: int, high: int) -> tuple[int, int, int]:
    return tuple(captcha_image.secrets.randbelow(high - low + 1) + low for _ in range(3))


def draw_imagecaptcha(rng: random.Random, label: str, fonts: tuple[str, ...] | None,
                      look: type = ImageCaptcha) -> Image.Image:
    """The captcha package's ImageCaptcha (or a `look` derived from it) at a random size, with a font of
    the pool, or the package's own fonts for fonts=None."""
    h = rng.randint(40, 80)
    w = int(h * rng.uniform(0.45, 0.75) * max(2, len(label))) + 10
    sizes = tuple(int(h * s) for s in (0.6, 0.7, 0.8))
    with captcha_drawing_from(rng):
        return look(w, h, fonts=[rng.choice(fonts)] if fonts else None, font_sizes=sizes).generate_image(label)


def draw_general(rng: random.Random, alphabet: str, lengths: tuple[int, int], width: int, height: int,
                 imagecaptcha_share: float = 0.25, kaggle_share: float = 0.0) -> tuple[np.ndarray, str]:
    """One (height, width, 3) uint8 image of a random style and its label: drawn at its own size
    and aspect, then scaled to (width, height) as every reader scales its inputs. A share of them is
    drawn by ImageCaptcha with the pool's fonts, and another in the competition's look (KaggleStyleCaptcha,
    the package's fonts); the rest by draw_parametric."""
    label = _labels(rng, alphabet, rng.randint(*lengths))
    pick = rng.random()
    if pick < imagecaptcha_share:
        img = draw_imagecaptcha(rng, label, font_pool())
    elif pick < imagecaptcha_share + kaggle_share:
        img = draw_imagecaptcha(rng, label, None, KaggleStyleCaptcha)
    else:
        img = draw_parametric(rng, label, font_pool())
    img = img.convert("RGB").resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8), label
