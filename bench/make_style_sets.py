#!/usr/bin/env python3
"""Write label-named captcha sets in styles the `captcha` package does not draw.

    python3 make_style_sets.py --out DIR --n 300 --seed 0 [--styles wheezy,claptcha,multicolor,simple] [--no-sheets]

Writes DIR/<style>/<label>.png (DIR/<style>/<label>_2.png, _3, ... when a label
repeats; the label is the file name before the first '_' or '.') and a 4x4 preview
DIR/<style>_sheet.png. Existing files in DIR are overwritten, not deleted: use a fresh DIR.

Styles (the first three each drawn by a different PyPI generator package):
  wheezy      wheezy.captcha 3.x : 160x60, digits + UPPER case, length 4-6 (variable),
              pale background, coloured warped/rotated glyphs, a bezier curve, dash noise, smoothing.
  claptcha    claptcha 0.3.3     : 150x50, digits + lower case, length 5,
              black quad-warped glyphs on white, one warped stroke through the text, grey snow noise.
  multicolor  multicolorcaptcha 1.2.0 : 200x40, mixed case (confusable glyphs dropped), length 5,
              one square tile per character with its own random background colour,
              contrasting rotated glyph, random font, two lines per tile, plus a horizontal line and circles.
  simple      plain Pillow drawing (no generator package): 120x40, digits + lower case minus
              'o'/'l', length 4-5 (variable), light background, dark FreeSans/FreeSansBold glyphs
              (26-30 px) rotated up to +-30 deg with small offsets, 4-5 thin lines through the
              text band and 70-110 dots; tuned so ddddocr reads ~90 % zero-shot.

Requires: pip install wheezy.captcha claptcha multicolorcaptcha   (Pillow >= 10 works; see shim below)
Fonts: all fonts come from the multicolorcaptcha wheel (GNU FreeFont, GPL+font exception;
Google Fonts under OFL; Pixellari; fontlibrary.org fonts), so no system fonts are needed.

Determinism: all three packages (and the simple style) draw their randomness from Python's global `random`
module (none uses `secrets`), and labels are drawn here from a seeded random.Random, so the
output is a pure function of --seed, --n and the package/Pillow versions.
"""
import argparse
import os
import random
import string
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import multicolorcaptcha
from multicolorcaptcha import CaptchaGenerator

FONT_DIR = os.path.join(os.path.dirname(multicolorcaptcha.__file__), "fonts")
FREEFONT = os.path.join(FONT_DIR, "freefont-20120503")

DIGITS = string.digits
UPPER = string.ascii_uppercase
LOWER = string.ascii_lowercase
# Mixed case: drop O, I, l (look like 0, 1) and the lower-case letters whose shape is the
# upper-case shape scaled down (c k o p s u v w x z), since per-character font sizes vary.
MIXED = DIGITS + "ABCDEFGHJKLMNPQRSTUVWXYZ" + "abdefghijmnqrty"


def ff(name):
    return os.path.join(FREEFONT, name)


def fontpath(*parts):
    return os.path.join(FONT_DIR, *parts)


# --------------------------------------------------------------------------- wheezy
def make_wheezy(rng):
    from wheezy.captcha import image as wz

    fonts = [ff("FreeSansBold.ttf"), ff("FreeSerifBold.ttf"), ff("FreeMonoBold.ttf"),
             ff("FreeSansBoldOblique.ttf")]
    # wheezy pastes glyphs with a mask = 1.97 * glyph luminance, so very dark text colours
    # come out faint: keep text colours of medium luminance (L ~ 100-130).
    palettes = [  # (background, text, curve/noise)
        ("#EEEECC", "#5C87B2", "#5C87B2"),  # wheezy's own defaults
        ("#F4F4F4", "#4A4AB8", "#8C8CB8"),
        ("#E8F0E0", "#2E8B57", "#6B9B6B"),
        ("#F6ECE6", "#C0392B", "#C08070"),
        ("#FFFFFF", "#7D5BA6", "#999999"),
    ]
    renderers = []
    for bg, fg, nz in palettes:
        renderers.append(wz.captcha(
            width=160, height=60,
            drawings=[
                wz.background(bg),
                wz.text(fonts=fonts, font_sizes=(34, 38, 42), color=fg, squeeze_factor=0.85,
                        drawings=[wz.warp(0.2, 0.15), wz.rotate(15), wz.offset(0.1, 0.15)]),
                wz.curve(nz, width=2, number=5),
                wz.noise(number=40, color=nz, level=2),
                wz.smooth(),
            ]))

    def draw(label):
        return random.choice(renderers)(label)

    def label_fn(rng):
        return "".join(rng.choice(DIGITS + UPPER) for _ in range(rng.randint(4, 6)))

    return draw, label_fn


# --------------------------------------------------------------------------- claptcha
def make_claptcha(rng):
    # claptcha 0.3.3 calls FreeTypeFont.getsize(), removed in Pillow 10: restore it.
    if not hasattr(ImageFont.FreeTypeFont, "getsize"):
        def _getsize(self, text, *a, **k):
            left, top, right, bottom = self.getbbox(text, *a, **k)
            return right, bottom
        ImageFont.FreeTypeFont.getsize = _getsize
    from claptcha import Claptcha as _Claptcha

    class Claptcha(_Claptcha):
        """claptcha with its per-letter quad warp at 0.15-0.45 of the glyph box instead of
        0.2-0.7 (the default squashes some letters to a few pixels); same code otherwise."""

        def _rndLetterTransform(self, image):
            w, h = image.size
            dx = w * random.uniform(0.15, 0.45)
            dy = h * random.uniform(0.15, 0.45)
            x1, y1 = self._rndPointDisposition(dx, dy)
            x2, y2 = self._rndPointDisposition(dx, dy)
            w += abs(x1) + abs(x2)
            h += abs(x1) + abs(x2)
            quad = self._quadPoints((w, h), (x1, y1), (x2, y2))
            return image.transform(image.size, Image.QUAD, data=quad, resample=self.resample)

    fonts = [ff("FreeSans.ttf"), ff("FreeSansBold.ttf"), ff("FreeSerif.ttf"),
             ff("FreeSerifBold.ttf"), ff("FreeMono.ttf"), ff("FreeMonoBold.ttf")]

    def draw(label):
        c = Claptcha(label, random.choice(fonts), size=(150, 50), margin=(14, 7),
                     resample=Image.BICUBIC, noise=random.uniform(0.2, 0.45))
        _, img = c.image
        return img

    def label_fn(rng):
        return "".join(rng.choice(DIGITS + LOWER) for _ in range(5))

    return draw, label_fn


# --------------------------------------------------------------------------- multicolor
def make_multicolor(rng):
    from multicolorcaptcha import _constants as mc_const

    gen = CaptchaGenerator(0)  # 256x144 preset -> 64x64 tiles, font size 30-45
    gen.l_fonts = [  # readable fonts that have distinct lower-case glyphs
        ff("FreeSansBold.ttf"), ff("FreeSerifBold.ttf"), ff("FreeMonoBold.ttf"),
        ff("FreeSansBoldOblique.ttf"),
        fontpath("GoogleFonts", "ofl", "aldrich", "Aldrich-Regular.ttf"),
        fontpath("GoogleFonts", "ofl", "combo", "Combo-Regular.ttf"),
        fontpath("GoogleFonts", "ofl", "elsie", "Elsie-Black.ttf"),
        fontpath("GoogleFonts", "ofl", "londrinasolid", "LondrinaSolid-Regular.ttf"),
        fontpath("GoogleFonts", "ofl", "rampartone", "RampartOne-Regular.ttf"),
        fontpath("Pixellari", "Pixellari.ttf"),
    ]
    gen.l_fonts = [f for f in gen.l_fonts if os.path.exists(f)]
    gen.font_size_range = (32, 40)

    # The package picks the glyph colour from the background's R+G+B sum, which leaves some
    # glyphs barely visible (e.g. light glyph on bright green). Use perceived luminance and
    # a wider gap instead (still drawn with the package's own gen_rand_color).
    def contrast_color(bg):
        lum = 0.299 * bg["R"] + 0.587 * bg["G"] + 0.114 * bg["B"]
        return gen.gen_rand_color(0, 60) if lum >= 130 else gen.gen_rand_color(200, 255)
    gen.gen_rand_custom_contrast_color = contrast_color
    tile = gen.one_char_image_size  # (64, 64)

    def draw(label):
        tiles = []
        for ch in label:
            bg = gen.gen_rand_color()  # package's "multicolor" mode: one background per tile
            # the package default is 2 strokes (in the glyph colour) per tile and +-55 deg;
            # 0-1 strokes and +-25 deg keep it human-readable at 40 px height
            t = gen.gen_captcha_char_image(ch, tile, lines=random.randint(0, 1),
                                           background_color=bg, rotation_limits=(-25, 25))
            tiles.append(t["image"])
        img = gen.images_join_horizontal(tiles)
        lines, circles = mc_const.DIFFICULT_LEVELS_VALUES[1]  # as gen_captcha_image(difficult_level=1)
        for _ in range(lines):
            gen.add_rand_horizontal_line_to_image(img, random.randint(1, 4))
        for _ in range(circles):
            gen.add_rand_circle_to_image(img, int(0.05 * tile[0]), int(0.15 * tile[1]))
        return img.convert("RGB").resize((40 * len(label), 40), Image.LANCZOS)

    def label_fn(rng):
        return "".join(rng.choice(MIXED) for _ in range(5))

    return draw, label_fn


# --------------------------------------------------------------------------- simple
# Knobs of the "simple" style (tuned so ddddocr reads ~85-95 % of them zero-shot).
SIMPLE_SIZE = (120, 40)
SIMPLE_ROT = 30            # max glyph rotation, degrees
SIMPLE_LINES = (4, 5)      # interference lines per image (min, max)
SIMPLE_DOTS = (70, 110)    # noise dots per image (min, max)
# digits + lower case without 'o' and 'l' (same glyph shape as '0' and '1' in FreeSans)
SIMPLE_CHARS = DIGITS + "abcdefghijkmnpqrstuvwxyz"


def make_simple(rng):
    """Plain website-style captcha drawn directly with Pillow: dark glyphs, slight rotation
    and offset, light background, a few thin lines and dots."""
    fonts = [ImageFont.truetype(ff(f), s) for f in ("FreeSans.ttf", "FreeSansBold.ttf")
             for s in (26, 28, 30)]
    W, H = SIMPLE_SIZE

    def draw(label):
        bg = tuple(random.randint(225, 255) for _ in range(3))
        img = Image.new("RGB", (W, H), bg)
        n = len(label)
        step = (W - 12) / n
        for i, ch in enumerate(label):
            font = random.choice(fonts)
            fg = tuple(random.randint(0, 110) for _ in range(3))
            left, top, right, bottom = font.getbbox(ch)
            gw, gh = right - left, bottom - top
            tile = Image.new("RGBA", (gw + 8, gh + 8), (0, 0, 0, 0))
            ImageDraw.Draw(tile).text((4 - left, 4 - top), ch, font=font, fill=fg + (255,))
            tile = tile.rotate(random.uniform(-SIMPLE_ROT, SIMPLE_ROT), resample=Image.BICUBIC,
                               expand=True)
            cx = 6 + step * (i + 0.5) + random.uniform(-2, 2)
            cy = H / 2 + random.uniform(-3, 3)
            img.paste(tile, (int(cx - tile.width / 2), int(cy - tile.height / 2)), tile)
        d = ImageDraw.Draw(img)
        for _ in range(random.randint(*SIMPLE_LINES)):
            col = tuple(random.randint(30, 150) for _ in range(3))
            d.line([(random.randint(0, W // 4), random.randint(H // 5, 4 * H // 5)),
                    (random.randint(3 * W // 4, W), random.randint(H // 5, 4 * H // 5))],
                   fill=col, width=random.choice((1, 1, 2)))
        for _ in range(random.randint(*SIMPLE_DOTS)):
            col = tuple(random.randint(40, 200) for _ in range(3))
            x, y = random.randint(0, W - 1), random.randint(0, H - 1)
            d.point([(x, y), (x + 1, y)] if random.random() < 0.5 else [(x, y)], fill=col)
        return img

    def label_fn(rng):
        return "".join(rng.choice(SIMPLE_CHARS) for _ in range(rng.randint(4, 5)))

    return draw, label_fn


STYLES = {"wheezy": make_wheezy, "claptcha": make_claptcha, "multicolor": make_multicolor,
          "simple": make_simple}


def contact_sheet(folder, path, k=4):
    names = sorted(f for f in os.listdir(folder) if f.endswith(".png"))[: k * k]
    ims = [Image.open(os.path.join(folder, f)).convert("RGB") for f in names]
    w = max(i.width for i in ims)
    h = max(i.height for i in ims)
    cap = 14
    sheet = Image.new("RGB", (k * (w + 6), k * (h + cap + 6)), "white")
    d = ImageDraw.Draw(sheet)
    font = ImageFont.truetype(ff("FreeMono.ttf"), 12)
    for idx, (f, im) in enumerate(zip(names, ims)):
        x, y = (idx % k) * (w + 6), (idx // k) * (h + cap + 6)
        sheet.paste(im, (x, y))
        d.text((x, y + h + 1), f.split(".")[0].split("_")[0], fill="black", font=font)
    sheet.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=300, help="images per style")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--styles", default=",".join(STYLES))
    ap.add_argument("--no-sheets", action="store_true", help="skip DIR/<style>_sheet.png (4x4 preview)")
    a = ap.parse_args(argv)

    for style in a.styles.split(","):
        # Each style gets its own seed so sets do not depend on which other styles are made.
        random.seed(f"{a.seed}:{style}")
        np.random.seed((a.seed * 1000003 + sum(map(ord, style))) % 2**32)
        rng = random.Random(f"labels:{a.seed}:{style}")
        draw, label_fn = STYLES[style](rng)
        d = os.path.join(a.out, style)
        os.makedirs(d, exist_ok=True)
        seen = {}
        for _ in range(a.n):
            label = label_fn(rng)
            img = draw(label)
            seen[label] = seen.get(label, 0) + 1
            name = label if seen[label] == 1 else f"{label}_{seen[label]}"
            img.convert("RGB").save(os.path.join(d, name + ".png"))
        print(f"{style}: {a.n} images ({len(seen)} distinct labels), size {img.size} -> {d}")
        if not a.no_sheets:
            contact_sheet(d, os.path.join(a.out, f"{style}_sheet.png"))


if __name__ == "__main__":
    sys.exit(main())
