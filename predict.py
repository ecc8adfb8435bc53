"""python predict.py ckpt=PATH data_dir=DIR [output=FILE]: see the README."""
from captcha_lit.commands.cli import predict

if __name__ == "__main__":
    predict()
