"""captcha-serve: readers behind HTTP. FastAPI on uvicorn: the ASGI stack most Python services
run, with OpenAPI docs (/docs) for free and a graceful SIGTERM (requests in flight finish, exit 0).

Routes: POST /read (captcha-lit's own: many images, multipart or base64 JSON), GET /health,
GET /models, and the routes of the two servers ddddocr's users run, answering as they do:
ocr_api_server's GET /ping, POST /ocr/file[/text|/json] (multipart field `image`) and
POST /ocr/b64[/text|/json] (the base64 image as the body), and ddddocr-fastapi's POST /ocr
(form field `file`, or `image` in base64).

Every route takes the reading options of predict.py as form fields, JSON keys or query
parameters: `alphabet` (ddddocr-fastapi's `charsets` too), `fold_case` and `lengths`; the
server's own (captcha-serve alphabet=... fold_case=... lengths=...) hold where a request sets none.

Concurrent requests are read together: each image joins its model's bounded queue, and one
reading thread takes whatever has gathered, up to `max_batch`, as one batch (the int8 path reads
fastest in batches). A full queue answers 503 at once. Decoding and reading stay off the event loop."""
import asyncio
import base64
import binascii
import contextlib
import io
import json
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import CaptchaError
from ..data.images import FORMATS, fit


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Each has an answer that names it: 4xx, or 503 for a full
    queue and 504 past the timeout."""
    max_body_bytes: int = 8 << 20     # a captcha is a few KB; 8 MB holds a batch of large ones
    max_pixels: int = 4_000_000       # per image, read from its header before decoding (bombs: 413)
    max_images: int = 64              # per request
    timeout_s: float = 10.0           # per request, queueing and reading included (504 past it)
    body_timeout_s: float = 5.0       # a client that stops sending its body is cut off (408) after this
    queue_size: int = 256             # images waiting per model; beyond it 503 at once
    max_batch: int = 64               # images read together

    def __post_init__(self):
        if self.queue_size < self.max_images:  # a request it cannot hold would be answered 503 forever
            raise CaptchaError(f"queue_size={self.queue_size} is below max_images={self.max_images}: a request of "
                               f"{self.max_images} images could never be queued; set queue_size to at least max_images")


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def decode(data: bytes, where: str, limits: Limits, width: int, height: int) -> np.ndarray:
    """Image bytes as the model's (height, width, 3) uint8 RGB; the size is checked from the
    header before anything is decoded."""
    if not data:
        raise BadRequest(400, f"{where}: empty image")
    try:
        with Image.open(io.BytesIO(data), formats=sorted(FORMATS)) as img:
            if img.width * img.height > limits.max_pixels:
                raise BadRequest(413, f"{where}: {img.width}x{img.height} pixels, more than the "
                                      f"{limits.max_pixels:,} an image may have")
            return fit(img, width, height, where)
    except BadRequest:
        raise
    except CaptchaError as e:  # an empty image
        raise BadRequest(400, str(e)) from None
    except Image.DecompressionBombError as e:  # Pillow's own ceiling, far above max_pixels: refused at open
        raise BadRequest(413, f"{where}: more than the {limits.max_pixels:,} pixels an image may have ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadRequest(400, f"{where}: not a readable PNG, JPEG, BMP, GIF or WebP image ({e})") from None


def from_base64(text, where: str) -> bytes:
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(400, f"{where}: expected a base64 string")
    text = text.strip()
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"{where}: not valid base64") from None


OPTIONS = ("alphabet", "fold_case", "lengths")
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def reading_options(fields) -> dict:
    """The reading options a request sets, from its form, JSON object or query (an empty value
    sets nothing); ddddocr-fastapi's `charsets` is `alphabet`."""
    given = {k: fields[k] for k in (*OPTIONS, "charsets") if k in fields and fields[k] not in ("", None)}
    for key, value in given.items():
        if not isinstance(value, (str, int, list)):  # a file in a form field, an object in JSON
            raise BadRequest(400, f"{key}: expected text, e.g. alphabet=digits, fold_case=true, lengths=4-6")
        if key in ("alphabet", "charsets") and not isinstance(value, str):
            raise BadRequest(400, f"{key}={value!r}: give the characters as text (\"0123456789\"), or by name: "
                                  f"digits, lower, upper joined with + (digits+lower)")
    if "charsets" in given:
        given.setdefault("alphabet", given.pop("charsets"))
    if "fold_case" in given:
        value = given["fold_case"]
        if not isinstance(value, bool) and str(value).strip().lower() not in TRUE + FALSE:
            raise BadRequest(400, f"fold_case={value!r}: true or false")
        given["fold_case"] = value if isinstance(value, bool) else str(value).strip().lower() in TRUE
    return given


class Batcher:
    """One model's queue and the batches read from it on the reading thread."""

    def __init__(self, reader, limits: Limits, pool: ThreadPoolExecutor):
        self.reader, self.limits, self.pool = reader, limits, pool
        self.queue: asyncio.Queue = asyncio.Queue(limits.queue_size)
        self.task = asyncio.get_running_loop().create_task(self.run())

    def read(self, batch: list) -> list:
        """One pass of the model over the batch; each image decoded with its request's options (a
        reader sharing the model: reader.reading()): (text, confidence), or the exception that its
        options' decoding raised, which fails only their requests."""
        logits = self.reader.logits(np.stack([image for image, _, _ in batch]))
        out = [None] * len(batch)
        for variant in {id(v): v for _, v, _ in batch}.values():
            rows = [i for i, (_, v, _) in enumerate(batch) if v is variant]
            try:
                read = [(text, float(c)) for text, c in zip(*variant.decode(logits[rows]))]
            except Exception as e:  # noqa: BLE001 - answered to those requests
                read = [e] * len(rows)
            for i, result in zip(rows, read):
                out[i] = result
        return out

    def submit(self, images: list[np.ndarray], reader) -> list[asyncio.Future]:
        if self.queue.maxsize - self.queue.qsize() < len(images):
            raise BadRequest(503, f"busy: {self.queue.qsize()} images are waiting for {self.reader.spec.task}; "
                                  f"try again shortly")
        loop = asyncio.get_running_loop()
        futures = []
        for image in images:
            future = loop.create_future()
            self.queue.put_nowait((image, reader, future))
            futures.append(future)
        return futures

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.limits.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            batch = [item for item in batch if not item[-1].done()]  # requests that timed out are gone
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.pool, self.read, batch)
            except Exception as e:  # a reading failure answers its requests, never kills the reader
                for *_, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (*_, f), result in zip(batch, results):
                if f.done():
                    continue
                if isinstance(result, Exception):
                    f.set_exception(result)
                else:
                    f.set_result(result)


def create_app(readers: dict, default: str, limits: Limits = Limits()) -> FastAPI:
    """The application over `readers` (task name -> CaptchaReader); requests that name no task
    are read by `default`."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="reading")  # one batch at a time uses every core
    batchers: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batchers.update({task: Batcher(r, limits, pool) for task, r in readers.items()})
        yield
        for b in batchers.values():
            b.task.cancel()
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="captcha-lit", description="Reads text captchas with captcha-lit's readers.", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest):
        return error(request.url.path, e.status, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):  # unknown routes, malformed multipart
        return error(request.url.path, e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return error(request.url.path, 422, f"invalid request: {e.errors()[:1]}")

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, e: ClientDisconnect):  # nobody is there to read an answer
        return error(request.url.path, 400, "the client went away before its request was whole")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):  # never a traceback to the client
        return error(request.url.path, 500, f"internal error ({type(e).__name__}); the server goes on")

    async def read(task: str | None, blobs: list[tuple[str, bytes]], options: dict) -> list[dict]:
        task = task or default
        if task not in readers:
            raise BadRequest(404, f"task={task!r}: this server reads {', '.join(sorted(readers))}")
        if not blobs:
            raise BadRequest(400, "no image in the request")
        if len(blobs) > limits.max_images:
            raise BadRequest(413, f"{len(blobs)} images in one request; at most {limits.max_images}")
        reader = readers[task]
        if options:  # the request's options over the server's
            try:
                reader = reader.reading(options.get("alphabet", reader.allowed), options.get("fold_case", reader.fold_case),
                                        options.get("lengths", reader.lengths))
            except CaptchaError as e:
                raise BadRequest(400, str(e)) from None
        spec = reader.spec
        images = await run_in_threadpool(lambda: [decode(b, name, limits, spec.width, spec.height) for name, b in blobs])
        futures = batchers[task].submit(images, reader)
        try:
            done = await asyncio.wait_for(asyncio.gather(*futures), limits.timeout_s)
        except asyncio.TimeoutError:
            for f in futures:
                f.cancel()
            raise BadRequest(504, f"not read within {limits.timeout_s:g} s; the server is overloaded") from None
        except CaptchaError as e:
            raise BadRequest(400, str(e)) from None
        return [{"text": text, "confidence": round(c, 6), "model": task} for text, c in done]

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": sorted(readers), "waiting": {t: b.queue.qsize() for t, b in batchers.items()}}

    @app.get("/models")
    async def models():
        return {"default": default, "models": [{**r.spec.values(), "precision": r.precision, "source": r.source,
                                                "reading": {"alphabet": r.allowed, "fold_case": r.fold_case,
                                                            "lengths": r.lengths}} for r in readers.values()]}

    @app.post("/read")
    async def read_route(request: Request):
        """Multipart: every file field is an image (`task` and the reading options form fields). JSON:
        {"images": [base64, ...]} or {"image": base64}, with "task" and the reading options. Answers
        {"results": [{text, confidence, model}]}."""
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form(max_files=limits.max_images + 1)
            blobs = [(f.filename or key, await f.read()) for key, f in form.multi_items() if hasattr(f, "read")]
            task, fields = form.get("task") or request.query_params.get("task"), form
        elif kind.startswith("application/json"):
            try:
                body = json.loads(await request.body())
            except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
                raise BadRequest(400, "the body is not valid JSON (or nested too deep)") from None
            if not isinstance(body, dict):
                raise BadRequest(400, 'expected a JSON object: {"images": [base64, ...], "task": ...}')
            items = body.get("images", [body["image"]] if "image" in body else [])
            if not isinstance(items, list):
                raise BadRequest(400, '"images" must be a list of base64 strings')
            if len(items) > limits.max_images:
                raise BadRequest(413, f"{len(items)} images in one request; at most {limits.max_images}")
            blobs = [(f"images[{i}]", from_base64(t, f"images[{i}]")) for i, t in enumerate(items)]
            task, fields = body.get("task") or request.query_params.get("task"), body
        else:
            raise BadRequest(415, "send multipart/form-data (image files) or application/json (base64 images)")
        if task is not None and not isinstance(task, str):
            raise BadRequest(400, "task must be a name, e.g. task3")
        return {"results": await read(task, blobs, reading_options({**request.query_params, **fields}))}

    # ---- ocr_api_server: /ping, /ocr/file, /ocr/b64, each with /text (the default) or /json
    @app.get("/ping", response_class=PlainTextResponse)
    async def ping():
        return "pong"

    @app.post("/ocr/{img_type}")
    @app.post("/ocr/{img_type}/{ret_type}")
    async def ocr_api_server(request: Request, img_type: str, ret_type: str = "text"):
        if img_type not in ("file", "b64") or ret_type not in ("text", "json"):
            raise BadRequest(404, f"/ocr/{img_type}/{ret_type}: use /ocr/file or /ocr/b64, then /text or /json")
        if img_type == "file":
            form = await request.form(max_files=2)
            upload = form.get("image")
            if upload is None or not hasattr(upload, "read"):
                raise BadRequest(400, "expected the image as the multipart file field 'image'")
            blob, fields = ("image", await upload.read()), form
        else:
            blob, fields = ("body", from_base64((await request.body()).decode("ascii", "replace"), "the body")), {}
        options = reading_options({**request.query_params, **fields})
        text = (await read(request.query_params.get("task") or fields.get("task"), [blob], options))[0]["text"]
        if ret_type == "json":
            return JSONResponse({"status": 200, "result": text, "msg": ""})
        return PlainTextResponse(text)

    # ---- ddddocr-fastapi: POST /ocr with a file or a base64 image form field
    @app.post("/ocr")
    async def ddddocr_fastapi(request: Request):
        form = await request.form(max_files=2)
        upload, image = form.get("file"), form.get("image")
        if hasattr(upload, "read"):
            blob = ("file", await upload.read())
        elif isinstance(image, str):
            blob = ("image", from_base64(image, "image"))
        else:
            raise BadRequest(400, "Either file or image must be provided")
        options = reading_options({**request.query_params, **form})
        text = (await read(request.query_params.get("task") or form.get("task"), [blob], options))[0]["text"]
        return {"code": 200, "message": "Success", "data": text}

    app.add_middleware(BodyLimit, limits=limits)
    return app


class BodyLimit:
    """ASGI middleware: a body over max_body_bytes gets 413 (from its Content-Length before it is
    read, or as it streams in), and a body that stops arriving 408."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, length = self.limits.max_body_bytes, dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            response = error(scope["path"], 413, f"the request body is {length.decode(errors='replace')} bytes; "
                                                 f"at most {limit:,}")
            return await response(scope, receive, send)
        received = 0

        async def guarded():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout_s)
            except asyncio.TimeoutError:
                raise BadRequest(408, f"the request body stopped arriving for {self.limits.body_timeout_s:g} s") from None
            received += len(message.get("body", b""))
            if received > limit:
                raise BadRequest(413, f"the request body is over {limit:,} bytes")
            return message
        await self.app(scope, guarded, send)


def error(path: str, status: int, message: str) -> JSONResponse:
    """A 4xx/5xx answer in the shape the route's clients expect."""
    if path.startswith("/ocr/"):
        return JSONResponse({"status": status, "result": "", "msg": message}, status)
    if path == "/ocr":
        return JSONResponse({"code": status, "message": message, "data": None}, status)
    return JSONResponse({"error": message, "status": status}, status)


def serve(readers: dict, default: str, host: str, port: int, limits: Limits = Limits()) -> None:
    """Runs the server until SIGTERM or Ctrl-C (requests in flight finish first)."""
    run(create_app(readers, default, limits), host, port,
        f"serving {', '.join(sorted(readers))} on http://{{address}} (docs: /docs); default {default}",
        limit_concurrency=4 * limits.queue_size, graceful_s=int(limits.timeout_s) + 1)


def run(app, host: str, port: int, banner: str, limit_concurrency: int | None = None, graceful_s: int = 5) -> None:
    """Serves `app` on host:port with uvicorn until SIGTERM (then exit code 0, once the requests in
    flight are answered) or Ctrl-C; prints `banner` with {address} filled in once it listens."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # no Nagle delay on the answers (the accepted connections inherit it): a small answer would
    # otherwise wait for the client's delayed ACK, 40 ms on Linux
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise CaptchaError(f"host={host} port={port}: cannot listen there ({e.strerror})") from None
    sock.listen(2048)  # connections wait in the backlog from now on, until uvicorn takes them
    print(banner.format(address=f"{host}:{sock.getsockname()[1]}"), flush=True)  # port=0: a free one
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_s,
                            limit_concurrency=limit_concurrency)
    # uvicorn stops on SIGTERM once the requests in flight are answered, then raises the signal
    # again for the handler it found: this one lets that end the process with exit code 0
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("stopped: every request in flight was answered", flush=True)
