"""captcha-label: a local page for labelling a folder of captchas, the reader's guess already typed.

Every answer goes into DIR/annotations.csv (the layout train.py reads) at once, written to a
temporary name and renamed into place; images marked unreadable and the session's counts go into
DIR/.captcha-label.json the same way. Started again, it continues with the first image that has
no answer. Only the images listed from DIR at start are ever served: no URL reaches another file."""
import json
import logging
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.folders import read_csv_rows
from ..data.images import IMAGE_SUFFIXES, image_size
from ..errors import CaptchaError
from ..files import atomic_write_text, regular_file, write_labels_csv

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("label.html")
STATE = ".captcha-label.json"
ORDERS = ("listed", "confidence", "disagree")
MAX_LABEL = 64  # characters: longer than any captcha, short enough for every CSV reader


class Labels:
    """The folder's images, their answers and the reader's guesses; every change is on disk
    before the request that made it is answered."""

    def __init__(self, root, reader=None, order: str = "listed"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise CaptchaError(f"data_dir={root}: no such folder")
        if order not in ORDERS:
            raise CaptchaError(f"order={order!r}: choose {', '.join(ORDERS)}")
        if reader is None and order != "listed":  # both orders sort by the reader's guesses
            raise CaptchaError(f"order={order}: needs a reader's guesses; add ckpt=PATH or keep order=listed")
        self.reader, self.order, self.lock = reader, order, threading.Lock()
        self.csv, self.state_path = self.root / "annotations.csv", self.root / STATE
        self.refused: dict[str, str] = {}  # files with an image's name that are not readable images
        self.names = []
        for path in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            name = path.relative_to(self.root).as_posix()
            try:
                image_size(path)  # a regular file whose header is a PNG, JPEG, BMP, GIF or WebP
                self.names.append(name)
            except CaptchaError as e:
                self.refused[name] = str(e).split(": ", 1)[-1]
        if not self.names:
            raise CaptchaError(f"data_dir={root}: no images (PNG, JPEG, BMP, GIF, WebP) below it")
        self.labels = {}
        if self.csv.exists():  # labels already there are kept, in their order, whatever is done here
            self.labels = {filename: label for _, filename, label in read_csv_rows(self.csv)}
        state = {}
        if self.state_path.exists():
            try:
                state = json.loads(regular_file(self.state_path, "state file").read_text(encoding="utf-8"))
                unreadable, counts = state.get("unreadable", []), state.get("counts", {})
                names_ok = isinstance(unreadable, list) and all(isinstance(n, str) for n in unreadable)
                counts_ok = isinstance(counts, dict) and all(isinstance(counts.get(k, 0), int) for k in ("accepted", "typed"))
                if not (names_ok and counts_ok):  # checked in -O too: not asserts
                    raise ValueError("not the state's fields")
            except (ValueError, UnicodeDecodeError, AttributeError):
                raise CaptchaError(f"{self.state_path}: not captcha-label's state file (the unreadable images and the "
                                   f"counts); move it away to start the counts anew (annotations.csv keeps the labels)")
        self.unreadable = set(state.get("unreadable", []))
        self.counts = {"accepted": 0, "typed": 0, **{k: state.get("counts", {}).get(k, 0) for k in ("accepted", "typed")}}
        self.guesses: dict[str, tuple[str, float]] = {}
        self.reading = threading.Thread(target=self._guess_all, daemon=True)

    def _guess_all(self):
        """The reader's guesses, in the order the page asks for them, in batches so the first
        arrive at once."""
        for i in range(0, len(self.names), 32):
            batch = self.names[i:i + 32]
            try:
                self._guess(batch)
            except CaptchaError:  # one image whose header reads but whose pixels do not: the others one by one
                for name in batch:
                    try:
                        self._guess([name])
                    except CaptchaError as e:
                        log.warning(f"no guess for {name}: {e}")

    def _guess(self, names):
        texts, confidence = self.reader.predict([self.root / n for n in names])
        self.guesses.update({n: (t, float(c)) for n, t, c in zip(names, texts, confidence)})

    def items(self) -> list[dict]:
        rows = [{"name": n, "label": self.labels.get(n), "unreadable": n in self.unreadable,
                 "guess": self.guesses.get(n, (None, None))[0], "confidence": self.guesses.get(n, (None, None))[1]}
                for n in self.names]
        ready = self.reader is None or not self.reading.is_alive()
        if self.order == "confidence" and ready:  # least confident first: where the reader needs a person most
            rows.sort(key=lambda r: r["confidence"] if r["confidence"] is not None else -1)
        elif self.order == "disagree" and ready:  # labels the reader reads otherwise first: likely typos
            # a reader that folds case, or was trained on lower-cased labels, disagrees with no label by case alone
            fold = str.lower if self.reader.fold_case or self.reader.spec.lowercase else str
            rows.sort(key=lambda r: not (r["label"] is not None and r["guess"] is not None
                                         and fold(r["label"]) != r["guess"]))
        return rows

    def summary(self) -> dict:
        done = sum(n in self.labels or n in self.unreadable for n in self.names)
        answered = self.counts["accepted"] + self.counts["typed"]
        return {"total": len(self.names), "done": done, "left": len(self.names) - done, **self.counts,
                "accept_rate": round(self.counts["accepted"] / answered, 4) if answered else None,
                "unreadable": len(self.unreadable), "refused": self.refused, "order": self.order,
                "model": self.reader.source if self.reader else None,
                "guessing": self.reader is not None and self.reading.is_alive()}

    def answer(self, name: str, label: str | None, accepted: bool = False) -> dict:
        """Records `label` for `name` (None: unreadable) and writes both files."""
        if name not in self.names:
            raise StarletteHTTPException(404, f"{name!r} is not an image of {self.root}")
        with self.lock:
            if label is None:
                self.unreadable.add(name)
                self.labels.pop(name, None)
            else:
                label = label.strip()
                if not 0 < len(label) <= MAX_LABEL or any(c in label for c in "\r\n"):
                    raise StarletteHTTPException(400, f"a label is one line of 1 to {MAX_LABEL} characters")
                self.labels[name] = label
                self.unreadable.discard(name)
                self.counts["accepted" if accepted else "typed"] += 1
            self._write()
        return self.summary()

    def _write(self):
        write_labels_csv(self.csv, self.labels.items())
        atomic_write_text(self.state_path, json.dumps({"unreadable": sorted(self.unreadable), "counts": self.counts},
                                                      indent=1) + "\n")


def create_app(labels: Labels) -> FastAPI:
    app = FastAPI(title="captcha-label", description="Label a folder of captchas.")
    if labels.reader is not None and labels.order != "listed":
        labels.reading.run()  # an order by the guesses needs all of them first
    elif labels.reader is not None:
        labels.reading.start()  # the first guesses arrive at once, the rest while labelling starts

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail), "status": e.status_code}, e.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/items")
    async def items():
        return {"items": labels.items(), "summary": labels.summary()}

    @app.get("/image/{name:path}")
    async def image(name: str):
        if name not in labels.names:  # only what was listed: no ../, no other file
            raise StarletteHTTPException(404, f"{name!r} is not an image of the folder being labelled")
        return FileResponse(labels.root / name, headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/answer")
    async def answer(request: Request):
        try:
            body = json.loads(await request.body())
            name, label, accepted = body["name"], body.get("label"), bool(body.get("accepted", False))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise StarletteHTTPException(400, 'expected {"name": ..., "label": ... or null, "accepted": ...}') from None
        if not isinstance(name, str) or not (label is None or isinstance(label, str)):
            raise StarletteHTTPException(400, "name and label must be text (label null: unreadable)")
        return labels.answer(name, label, accepted)

    return app
