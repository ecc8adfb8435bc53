"""Console entry points (train.py, predict.py and the captcha-* commands all land here).
Each hands its Hydra config to the package and turns a CaptchaError into a one-line message."""
import sys

import hydra
from omegaconf import DictConfig

from .errors import CaptchaError
from .tasks import CONF_DIR

CONF = str(CONF_DIR)


def _run(fn, cfg):
    try:
        return fn(cfg)
    except CaptchaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def train(cfg: DictConfig) -> float:
    from .train import train as run
    return _run(run, cfg)


@hydra.main(config_path=CONF, config_name="predict", version_base="1.3")
def predict(cfg: DictConfig) -> None:
    from .predict import predict as run
    _run(run, cfg)


@hydra.main(config_path=CONF, config_name="generate", version_base="1.3")
def generate(cfg: DictConfig) -> None:
    from .generate import generate as run
    _run(run, cfg)
