"""Seeded randomness for the `captcha` package.

captcha 0.7 draws every random number from the `secrets` module, which no seed reaches. The
renderers draw with the package's own code but point its `secrets` at a seeded generator for the
duration of one image, so that (seed, stream, index) always gives the same picture and label."""
import contextlib
import hashlib
import random
import threading

from captcha import image as captcha_image

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


@contextlib.contextmanager
def captcha_drawing_from(rng: random.Random):
    """The captcha package draws its randomness from `rng` inside the block."""
    with _swap_lock:
        saved, captcha_image.secrets = captcha_image.secrets, rng
        try:
            yield
        finally:
            captcha_image.secrets = saved
