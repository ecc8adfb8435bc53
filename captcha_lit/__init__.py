"""captcha-lit: ResNet captcha readers trained with PyTorch Lightning and Hydra."""
