"""Reading one image file as the (H, W, 3) uint8 RGB array every model here takes."""
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import CaptchaError
from ..files import regular_file

# the raster formats captchas come in; anything else Pillow could open is refused
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
FORMATS = {"PNG", "JPEG", "BMP", "GIF", "WEBP"}


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: transparency is laid on white (as a browser shows it), 16- and 32-bit
    grayscale is scaled to 8 bits instead of clipped to white."""
    if img.mode.startswith("I;16"):  # 16-bit: the full range maps onto 8 bits
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).round().astype(np.uint8))
    elif img.mode in ("I", "F"):  # 32-bit: no fixed range, so the brightest pixel becomes white
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((a * (255.0 / max(a.max(), 1e-12))).clip(0, 255).round().astype(np.uint8))
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:  # a colour key, not an alpha channel
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def fit(img: Image.Image, width: int, height: int, where: str) -> np.ndarray:
    """A PIL image as the model's (height, width, 3) uint8 RGB, resized (bilinear) when its size
    differs: training, reading and serving all see an image through this."""
    if 0 in img.size:
        raise CaptchaError(f"{where}: an empty image ({img.width}x{img.height})")
    img = to_rgb(img)
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_image(path, width: int, height: int) -> np.ndarray:
    """An image file as (height, width, 3) uint8 RGB, resized when its size differs."""
    regular_file(path, "image")
    try:
        with Image.open(path, formats=sorted(FORMATS)) as img:
            return fit(img, width, height, str(path))
    except FileNotFoundError:
        raise CaptchaError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CaptchaError(f"{path}: not a readable image ({e})") from None


def image_size(path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    regular_file(path, "image")
    try:
        with Image.open(path, formats=sorted(FORMATS)) as img:
            return img.size
    except FileNotFoundError:
        raise CaptchaError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CaptchaError(f"{path}: not a readable image ({e})") from None
