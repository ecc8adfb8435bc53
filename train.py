"""python train.py [overrides]: see `python train.py --help` and the README."""
from captcha_lit.commands.cli import train

if __name__ == "__main__":
    train()
