"""captcha-serve: the real server on a free loopback port, real HTTP requests."""
import base64
import io
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from captcha_lit import CaptchaReader
from captcha_lit.model.module import CaptchaModule

from .helpers import make_folder, module_args

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server over three tiny models (task1, task3 and a CTC reader of upper and lower case,
    "mine"), folding case unless a request says otherwise, and a few task3 images to read."""
    tmp = tmp_path_factory.mktemp("serve")
    ckpts = {}
    for name in ("task1", "task3", "mine"):
        torch.manual_seed(0)
        if name == "mine":
            module = CaptchaModule(dict(name="mine", length=[1, 4], alphabet=ALNUM, width=64, height=32), head="ctc",
                                   widths=(16, 16, 32, 32), strides=(2, 2, 2, (2, 1)))
        else:
            module = CaptchaModule(**module_args(name), widths=(16, 16, 32, 32))
        ckpts[name] = tmp / f"{name}.ckpt"
        torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpts[name])
    data = make_folder(tmp / "d", {"task3": 12})
    cmd = [sys.executable, "-c", "from captcha_lit.commands.cli import serve; serve()",
           f"ckpt=[{ckpts['task3']},{ckpts['task1']},{ckpts['mine']}]", "fold_case=true",
           "port=0", "precision=32", "max_images=8", "body_timeout_s=1", "max_body_mb=1", "max_pixels=1000000"]
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    deadline = time.monotonic() + 120
    while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
    assert "serving" in line, proc.stderr.read()
    port = int(line.split("http://127.0.0.1:")[1].split()[0])
    images = sorted((data / "task3").glob("*.png"))
    expected = CaptchaReader.from_checkpoint(ckpts["task3"], precision="32").read(images)
    yield dict(url=f"http://127.0.0.1:{port}", port=port, proc=proc, images=images, expected=expected, tmp=tmp,
               mine=ckpts["mine"])
    if proc.poll() is None:
        proc.kill()


def call(url, body=None, headers=None, method=None):
    """(status, parsed JSON or text) of one request."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, raw, kind = r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get("content-type", "")
    return status, json.loads(raw) if kind.startswith("application/json") else raw.decode()


def multipart(files: dict, fields: dict = None) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, items in files.items():
        for filename, data in (items if isinstance(items, list) else [items]):
            out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                      f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def raw_request(port, line, headers, body, tries=3):
    """(status, parsed JSON) of a request written by hand: headers a client library would not send,
    a body the server answers before it has all of it (a server that closes on a body it has not
    read resets the connection, which can take its answer with it: then the request is sent again)."""
    for _ in range(tries - 1):
        try:
            return _raw_request(port, line, headers, body)
        except (ConnectionResetError, IndexError):
            time.sleep(0.2)
    return _raw_request(port, line, headers, body)


def _raw_request(port, line, headers, body):
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "x", "Content-Type": "application/json", "Connection": "close",
                                                 **headers}.items())
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"{line} HTTP/1.1\r\n{head}\r\n".encode())
        try:
            s.sendall(body)
        except OSError:  # the server answered and closed before taking it all
            pass
        s.settimeout(10)
        answer = b""
        while chunk := s.recv(65536):  # until the server closes the connection
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    is_json = b"application/json" in head.lower()
    return int(head.split()[1]), json.loads(payload) if is_json else payload.decode()


def concurrently(work, n: int) -> list[str]:
    """Runs work(k) for k in range(n) on n threads at once; the errors they raised."""
    errors = []

    def run(k):
        try:
            work(k)
        except Exception as e:  # noqa: BLE001 - returned to the test
            errors.append(repr(e))
    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def post_json(url, payload):
    return call(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def test_reads_json_multipart_and_base64_as_the_reader_does(server):
    url, images, expected = server["url"], server["images"], server["expected"]
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in images]
    status, body = post_json(f"{url}/read", {"images": b64[:6], "task": "task3"})
    assert status == 200 and [r["text"] for r in body["results"]] == expected[:6]
    assert all(r["model"] == "task3" and 0 <= r["confidence"] <= 1 for r in body["results"])
    data, headers = multipart({"image": [(p.name, p.read_bytes()) for p in images[6:]]}, {"task": "task3"})
    status, body = call(f"{url}/read", data, headers)
    assert status == 200 and [r["text"] for r in body["results"]] == expected[6:]
    status, body = post_json(f"{url}/read", {"image": "data:image/png;base64," + b64[0]})  # the default: task3
    assert status == 200 and body["results"][0]["text"] == expected[0]
    assert call(f"{url}/health") == (200, {"status": "ok", "models": ["mine", "task1", "task3"],
                                           "waiting": {"mine": 0, "task1": 0, "task3": 0}})
    status, body = call(f"{url}/models")
    assert body["default"] == "task3"
    assert {m["task"]: m["width"] for m in body["models"]} == {"task3": 96, "task1": 72, "mine": 64}
    assert body["models"][2]["reading"] == {"alphabet": None, "fold_case": True, "lengths": None}
    assert call(f"{url}/openapi.json")[0] == 200


def test_the_routes_of_ocr_api_server_and_ddddocr_fastapi_answer_as_they_do(server):
    url, image, text = server["url"], server["images"][0], server["expected"][0]
    assert call(f"{url}/ping") == (200, "pong")
    data, headers = multipart({"image": (image.name, image.read_bytes())})
    assert call(f"{url}/ocr/file", data, headers) == (200, text)
    assert call(f"{url}/ocr/file/json", data, headers) == (200, {"status": 200, "result": text, "msg": ""})
    b64 = base64.b64encode(image.read_bytes())
    assert call(f"{url}/ocr/b64/text", b64) == (200, text)
    assert call(f"{url}/ocr/b64/json", b64) == (200, {"status": 200, "result": text, "msg": ""})
    data, headers = multipart({"file": (image.name, image.read_bytes())})
    assert call(f"{url}/ocr", data, headers) == (200, {"code": 200, "message": "Success", "data": text})
    data, headers = multipart({}, {"image": b64.decode()})
    assert call(f"{url}/ocr", data, headers) == (200, {"code": 200, "message": "Success", "data": text})


def test_each_request_reads_with_its_own_alphabet_case_and_lengths(server):
    url, images = server["url"], server["images"]
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in images[:8]]

    def served(route="/read", **options):
        status, body = post_json(f"{url}{route}", {"images": b64, "task": "mine", **options})
        assert status == 200, body
        return [r["text"] for r in body["results"]]

    def expected(**options):
        return CaptchaReader.from_checkpoint(server["mine"], precision="32", **options).read(images[:8])

    mixed = served(fold_case=False)
    assert mixed == expected() and any(c.isupper() for c in "".join(mixed))  # this untrained model reads capitals
    folded = served()  # the server's fold_case=true
    assert folded == expected(fold_case=True) != mixed and all(t == t.lower() for t in folded)
    digits = served(alphabet="digits")
    assert digits == expected(allowed="digits", fold_case=True) and all(t.isdigit() or not t for t in digits)
    assert any(not 3 <= len(t) <= 4 for t in mixed)  # read greedily, some have other lengths
    assert served(lengths="3-4") == served(lengths=[3, 4]) == expected(fold_case=True, lengths="3-4")
    assert all(3 <= len(t) <= 4 for t in served(lengths="3-4", fold_case="false"))
    # as form fields and query parameters, on every route
    first = images[0].read_bytes()
    data, headers = multipart({"image": (images[0].name, first)}, {"task": "mine", "alphabet": "digits"})
    assert call(f"{url}/read?fold_case=0", data, headers)[1]["results"][0]["text"] == expected(allowed="digits")[0]
    assert call(f"{url}/ocr/b64/text?task=mine&lengths=4", b64[0].encode()) == (200, expected(fold_case=True, lengths=4)[0])
    data, headers = multipart({"file": (images[0].name, first)}, {"task": "mine", "charsets": "0123456789"})
    assert call(f"{url}/ocr", data, headers)[1]["data"] == digits[0]
    data, headers = multipart({"image": (images[0].name, first)}, {"task": "mine", "alphabet": "digits"})
    assert call(f"{url}/ocr/file", data, headers) == (200, digits[0])
    status, body = call(f"{url}/read?task=mine&alphabet=digits", *multipart({"image": (images[0].name, first)}))
    assert body["results"][0] == {**body["results"][0], "text": digits[0], "model": "mine"}
    # requests with different options read together, each as it asked
    answers = {}

    def client(k):
        answers[k] = served(**({"alphabet": "digits"} if k % 2 else {"fold_case": False}))
    assert concurrently(client, 8) == [] and all(answers[k] == (digits if k % 2 else mixed) for k in range(8))
    # a bad option: 400 naming it, and the server reads on as before
    for options, words in ((dict(alphabet="€"), "never reads '€'"), (dict(lengths="6-4"), "lengths='6-4'"),
                           (dict(fold_case="maybe"), "fold_case='maybe': true or false"),
                           (dict(alphabet={"a": 1}), "alphabet: expected text"),
                           (dict(charsets=123), "charsets=123: give the characters as text"),
                           (dict(task="task3", lengths=2), "the task3 model reads exactly 4 characters")):
        status, body = post_json(f"{url}/read", {"images": b64[:1], "task": "mine", **options})
        assert status == 400 and words in body["error"], (options, body)
    assert call(f"{url}/ocr/b64/json?task=mine&lengths=x", b64[0].encode())[1]["msg"].startswith("lengths='x'")
    assert served() == expected(fold_case=True)


def test_one_batch_of_requests_with_different_options_reads_each_as_asked(server):
    from types import SimpleNamespace

    from captcha_lit.web.serve import Batcher
    reader = CaptchaReader.from_checkpoint(server["mine"], precision="32")
    variants = [reader, reader.reading("digits"), reader.reading(lengths="3-4")]
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((64, 32))) for p in server["images"][:6]]
    assert len({tuple(v.read(arrays)) for v in variants}) == 3  # each reads these images differently
    got = Batcher.read(SimpleNamespace(reader=reader), [(a, variants[i % 3], None) for i, a in enumerate(arrays)])
    assert [text for text, _ in got] == [variants[i % 3].read([a])[0] for i, a in enumerate(arrays)]
    # a decoding that fails answers only the requests with its options
    broken = reader.reading("digits")
    broken.decode = lambda logits: 1 / 0
    got = Batcher.read(SimpleNamespace(reader=reader), [(arrays[0], broken, None), (arrays[1], reader, None)])
    assert isinstance(got[0], ZeroDivisionError) and got[1][0] == reader.read([arrays[1]])[0]


def huge_png(width=20000, height=20000) -> bytes:
    """A PNG whose header says width x height, in a few hundred bytes: a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4000)) + \
        chunk(b"IEND", b"")


def test_hostile_requests_get_a_4xx_that_names_the_problem_and_the_server_reads_on(server):
    url, image = server["url"], server["images"][0]
    png = image.read_bytes()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    tiny = base64.b64encode(buffer.getvalue()).decode()
    bad = {
        "decompression bomb": (post_json, {"images": [base64.b64encode(huge_png()).decode()]}, 413, "pixels"),
        "truncated image": (post_json, {"images": [base64.b64encode(png[:60]).decode()]}, 400, "not a readable"),
        "text as an image": (post_json, {"images": [base64.b64encode(b"hello world").decode()]}, 400, "not a readable"),
        "empty base64": (post_json, {"images": [""]}, 400, "expected a base64 string"),
        "broken base64": (post_json, {"images": ["abc$%^"]}, 400, "not valid base64"),
        "unknown task": (post_json, {"images": [base64.b64encode(png).decode()], "task": "task9"}, 404, "task9"),
        "too many images": (post_json, {"images": [tiny] * 1000}, 413, "1000 images"),
        "no image": (post_json, {"images": []}, 400, "no image"),
        "a list, not an object": (post_json, [1, 2], 400, "JSON object"),
        "images not a list": (post_json, {"images": "abc"}, 400, "must be a list"),
        "task not a name": (post_json, {"images": [base64.b64encode(png).decode()], "task": 3}, 400, "task must"),
    }
    for what, (send, payload, status, words) in bad.items():
        got, body = send(f"{url}/read", payload)
        assert got == status and words in body["error"], (what, got, body)
    raw = [
        ("not JSON", call, (f"{url}/read", b"{not json", {"Content-Type": "application/json"}), 400),
        ("no content type", call, (f"{url}/read", b"abc", {"Content-Type": "text/plain"}), 415),
        ("oversized body", raw_request, (server["port"], "POST /read", {"Content-Length": str(2 << 20)}, b"x"), 413),
        ("oversized body, no length", raw_request, (server["port"], "POST /read", {"Transfer-Encoding": "chunked"},
                                                    b"".join(b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
                                                             for _ in range(20)) + b"0\r\n\r\n"), 413),
        ("unknown route", call, (f"{url}/nowhere",), 404),
        ("wrong method", call, (f"{url}/read", None, None, "GET"), 405),
        ("ocr_api_server without its field", call, (f"{url}/ocr/file/json", *multipart({"file": ("a", png)})), 400),
        ("ocr_api_server broken base64", call, (f"{url}/ocr/b64/json", b"%%%"), 400),
        ("ddddocr-fastapi with nothing", call, (f"{url}/ocr", *multipart({}, {"x": "1"})), 400),
        ("bomb on a compatible route", call, (f"{url}/ocr/b64/text", base64.b64encode(huge_png())), 413),
    ]
    for what, send, args, status in raw:
        start = time.monotonic()
        got, body = send(*args)
        assert got == status and time.monotonic() - start < 1, (what, got, body)
        assert isinstance(body, dict) and ("error" in body or "msg" in body or "message" in body), (what, body)
    # a Content-Length that is no number: uvicorn's HTTP parser refuses the request itself
    assert raw_request(server["port"], "POST /read", {"Content-Length": "abc"}, b"{}")[0] == 400
    assert call(f"{url}/ocr/b64/json", b"%%%")[1]["msg"].startswith("the body: not valid base64")
    assert call(f"{url}/ocr", *multipart({}, {"x": "1"}))[1] == \
        {"code": 400, "message": "Either file or image must be provided", "data": None}
    # half a body, then silence: cut off by the body timeout (1 s here), not left waiting
    with socket.create_connection(("127.0.0.1", server["port"])) as s:
        s.sendall(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"im")
        s.settimeout(10)
        start = time.monotonic()
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 5, answer
    status, body = post_json(f"{url}/read", {"images": [base64.b64encode(png).decode()]})
    assert status == 200 and body["results"][0]["text"] == server["expected"][0]  # still reading


def test_a_concurrent_burst_is_read_right(server):
    url, images, expected = server["url"], server["images"], server["expected"]
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in images]
    got = {}

    def client(k):
        for j in range(5):
            i = (k + j) % len(images)
            status, body = post_json(f"{url}/read", {"images": [b64[i]], "task": "task3"})
            got[(k, j)] = (i, status, body["results"][0]["text"] if status == 200 else body)
    assert concurrently(client, 16) == [] and len(got) == 80
    assert all(status == 200 and text == expected[i] for i, status, text in got.values())


def test_sigterm_answers_the_requests_in_flight_and_exits_0(server):
    proc = server["proc"]
    b64 = base64.b64encode(server["images"][0].read_bytes()).decode()
    body = json.dumps({"images": [b64] * 8, "task": "task3"}).encode()
    head = f"POST /read HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server["port"])) as s:
        s.sendall(head.encode() + body[:100])  # a request in flight: its body half sent
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        s.sendall(body[100:])  # within the server's body_timeout_s=1
        s.settimeout(10)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status, _, payload = answer.partition(b"\r\n\r\n")
    assert status.split()[1] == b"200" and [r["text"] for r in json.loads(payload)["results"]] == [server["expected"][0]] * 8
    assert proc.wait(timeout=30) == 0
    assert "stopped: every request in flight was answered" in proc.stdout.read()
    assert "Traceback" not in proc.stderr.read()


def test_a_queue_that_cannot_hold_one_request_is_refused_at_start():
    # a 20-image request to a server queueing 16 would be answered 503 "busy" every time
    proc = subprocess.run([sys.executable, "-c", "from captcha_lit.commands.cli import serve; serve()", "port=0",
                           "max_images=20", "queue_size=16"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "queue_size=16 is below max_images=20: a request of 20 images could never be queued" in proc.stderr
    # a server-wide reading option no model can keep
    proc = subprocess.run([sys.executable, "-c", "from captcha_lit.commands.cli import serve; serve()", "port=0",
                           "ckpt=pretrained:task1", "lengths=4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "lengths=4: the task1 model reads exactly 1 character" in proc.stderr
