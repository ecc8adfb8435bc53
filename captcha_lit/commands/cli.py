"""Console entry points (train.py, predict.py and the captcha-* commands all land here).
Each hands its Hydra config to the package and turns a CaptchaError into a one-line message."""
import argparse
import gc
import signal
import sys
import threading
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ..errors import CaptchaError, Terminated
from ..data.tasks import CONF_DIR

CONF = str(CONF_DIR)


def _terminate(signum, frame):
    raise Terminated


def run_reporting(fn, *args):
    """fn(*args), with an expected failure as one `error:` line and exit code 2, and Ctrl-C or
    SIGTERM as one line and exit code 130 or 143 (what was written before is intact: every write is
    atomic). The exit comes after the failure is let go, so that its frames close first: their
    worker pools shut down and their partial output is taken back."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return fn(*args)
    except CaptchaError as e:
        message, code = f"error: {e}", 2
    except OSError as e:  # the file system's own errors: a full disk, a read-only or missing path
        message, code = f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", 2
    except KeyboardInterrupt as e:
        name, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("Ctrl-C", 130)
        message = f"interrupted ({name}); nothing half-written was left"
    gc.collect()  # frames of the failure (and the generators in them) close now, not at exit
    print(message, file=sys.stderr)
    sys.exit(code)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def _train(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from .train import train as run
    overrides = list(HydraConfig.get().overrides.task)  # resume= applies some, refuses others
    return run_reporting(run, cfg, overrides)


@hydra.main(config_path=CONF, config_name="predict", version_base="1.3")
def _predict(cfg: DictConfig) -> None:
    from .predict import predict as run
    run_reporting(run, cfg)


@hydra.main(config_path=CONF, config_name="serve", version_base="1.3")
def _serve(cfg: DictConfig) -> None:
    def run():
        from ..model.packaged import PRETRAINED
        from .settings import check_settings
        from .predict import load_readers
        from ..reading.reader import characters, length_range
        from ..web.serve import Limits, serve

        check_settings(cfg, "serve")
        characters(cfg.alphabet)  # bad values refused before any model loads
        length_range(cfg.lengths)
        limits = Limits(max_body_bytes=int(cfg.max_body_mb * (1 << 20)), max_pixels=cfg.max_pixels,
                        max_images=cfg.max_images, timeout_s=cfg.timeout_s, body_timeout_s=cfg.body_timeout_s,
                        queue_size=cfg.queue_size, max_batch=cfg.max_batch)
        ckpts = cfg.ckpt if cfg.ckpt is not None else [f"pretrained:{p.stem}" for p in sorted(PRETRAINED.glob("*.ckpt"))]
        ckpts = [ckpts] if isinstance(ckpts, str) else list(ckpts)
        readers = load_readers(ckpts, device=cfg.device, precision=cfg.precision, batch_size=cfg.max_batch,
                               num_workers=0, allowed=cfg.alphabet, fold_case=cfg.fold_case, lengths=cfg.lengths)
        default = cfg.default or ("general" if cfg.ckpt is None and "general" in readers else next(iter(readers)))
        if default not in readers:
            raise CaptchaError(f"default={default}: no model for it (the models read {', '.join(readers)})")
        serve(readers, default, cfg.host, cfg.port, limits)
    run_reporting(run)


@hydra.main(config_path=CONF, config_name="label", version_base="1.3")
def _label(cfg: DictConfig) -> None:
    def run_label():
        from ..model.packaged import PRETRAINED
        from ..reading.reader import CaptchaReader, characters, length_range
        from ..web.label import Labels, create_app
        from ..web.serve import run

        from .settings import check_settings

        if cfg.data_dir is None:
            raise CaptchaError("no folder given: add data_dir=DIR (the images to label)")
        check_settings(cfg, "label")
        characters(cfg.alphabet)  # bad values refused even when no reader will use them
        length_range(cfg.lengths)
        ckpt = cfg.ckpt
        if ckpt == "auto":
            ckpt = "pretrained:general" if (PRETRAINED / "general.ckpt").is_file() else None
        reader = None
        if ckpt is not None:
            from .predict import sweep_checkpoints  # a run folder: its model
            path = Path(str(ckpt))
            path = sweep_checkpoints(path)[0] if path.is_dir() else ckpt
            read = CaptchaReader.from_onnx if str(path).endswith(".onnx") else CaptchaReader.from_checkpoint
            reader = read(path, allowed=cfg.alphabet, fold_case=cfg.fold_case, lengths=cfg.lengths,
                          **({} if str(path).endswith(".onnx") else {"device": cfg.device, "precision": cfg.precision}))
        labels = Labels(cfg.data_dir, reader, cfg.order)
        done = labels.summary()
        run(create_app(labels), cfg.host, cfg.port,
            f"labelling {done['total']} images of {cfg.data_dir} ({done['done']} done) on http://{{address}}"
            + (f"; guesses by {reader.source}" if reader else "; no reader: nothing pre-typed"))
    run_reporting(run_label)


@hydra.main(config_path=CONF, config_name="generate", version_base="1.3")
def _generate(cfg: DictConfig) -> None:
    from .generate import generate as run
    run_reporting(run, cfg)


def export(argv=None):
    """captcha-export: argparse, as it takes files rather than settings."""
    from ..model.packaged import model_path
    from ..reading.export import export_ddddocr, export_onnx, export_weights, int8_from_folder

    parser = argparse.ArgumentParser(prog="captcha-export", description="Export a captcha-lit checkpoint: ONNX, its int8 copy, ddddocr, or fp16 weights")
    parser.add_argument("ckpt", help="a captcha-lit checkpoint (.ckpt), or pretrained:NAME for a packaged reader")
    parser.add_argument("output", nargs="?", help="the .onnx file (default: beside the checkpoint; with --int8 its "
                                                  "int8 copy CHECKPOINT.int8.onnx, which predict.py then reads with)")
    parser.add_argument("--format", choices=("onnx", "ddddocr", "weights"), default="onnx",
                        help="onnx: for captcha-lit's reader and onnxruntime; ddddocr: OUT.onnx + OUT.charsets.json; "
                             "weights: OUT.ckpt, the hyperparameters and fp16 weights alone (a start for init_from=, "
                             "as the packaged readers are)")
    parser.add_argument("--int8", metavar="DIR", help="onnx: an int8 model, calibrated on up to 256 images of DIR "
                                                      "(or of DIR/TASK) and checked against fp32 on up to 1,024 "
                                                      "others: about twice as fast on CPUs with VNNI")
    args = parser.parse_args(argv)
    if args.int8 and args.format != "onnx":
        parser.error(f"--int8 makes an int8 ONNX model (--format onnx), not --format {args.format}")
    ckpt = run_reporting(model_path, args.ckpt)
    if args.output is None and args.ckpt.startswith("pretrained:"):  # here, not beside it in the installed package
        suffix = ".int8.onnx" if args.int8 else ".ddddocr" if args.format == "ddddocr" else ".onnx"
        args.output = Path(ckpt.stem + suffix)
    args.ckpt = ckpt
    if args.format == "weights":
        if not args.output:
            parser.error("--format weights: name the output, e.g. captcha-export CKPT reader.ckpt --format weights")
        print(run_reporting(export_weights, args.ckpt, args.output))
    elif args.format == "ddddocr":
        # default X.ddddocr.onnx: X.onnx is the ONNX export's
        print(*run_reporting(export_ddddocr, args.ckpt, args.output or Path(args.ckpt).with_suffix(".ddddocr")), sep="\n")
    elif args.int8:
        print(run_reporting(int8_from_folder, args.ckpt, args.int8, args.output))
    else:
        print(run_reporting(export_onnx, args.ckpt, args.output))


def _checked(config_name: str, main):
    """The command `main`, with Hydra's own refusals of its command line (a misspelt key, an
    unknown option, a broken list) as one `error:` line and exit code 2, like every other refusal:
    the overrides are composed once before Hydra runs. Flags (--help, -m, --cfg) go to Hydra as
    they are."""
    def command():
        args = sys.argv[1:]
        if not any(a.startswith("-") for a in args):
            from hydra import compose, initialize_config_dir
            try:
                with initialize_config_dir(config_dir=CONF, version_base="1.3"):
                    compose(config_name, overrides=args)
            except Exception as e:  # Hydra's override-grammar and composition errors
                print(f"error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
                sys.exit(2)
            run_dir = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
            if config_name == "train" and run_dir and not any(a.startswith(("resume=", "ckpt_path=")) for a in args):
                from .train import refuse_used_run_folder  # before Hydra rewrites that run's .hydra/ files
                run_reporting(refuse_used_run_folder, run_dir)
        return main()
    command.__doc__ = main.__doc__
    return command


train, predict, serve = _checked("train", _train), _checked("predict", _predict), _checked("serve", _serve)
label, generate = _checked("label", _label), _checked("generate", _generate)
