"""Atomic file writes: everything the project writes goes to a temporary name first and is
renamed into place, so a crash never leaves a half-written file or clobbers a good one."""
import contextlib
import csv
import io
import os
import stat
import tempfile
from pathlib import Path

from .errors import CaptchaError


def regular_file(path, what: str = "file") -> Path:
    """`path`, refused in one line unless it is a regular file (or a link to one): a named pipe or
    a device would block the reader forever or never end."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CaptchaError(f"{path}: {what} not found") from None
    except OSError as e:  # a name the file system cannot take, a loop of links, no permission
        raise CaptchaError(f"{path}: cannot read this {what} ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "not a regular file"
        raise CaptchaError(f"{path}: {kind}, not an {what}" if what[0] in "aeiou" else f"{path}: {kind}, not a {what}")
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are meant to be shared
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")  # the readers read UTF-8, whatever the locale


def write_labels_csv(path, rows) -> None:
    """(filename, label) rows under a filename,label header, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filename", "label"])
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
