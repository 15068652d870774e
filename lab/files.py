"""Reading the small files a user hands the lab (scenarios, result.json): regular files only, bounded;
and writing the lab's own files (reports, slides) so that an interrupted write never leaves half a file.

A path may name anything: /dev/zero, a FIFO, a symlink to either, a file that keeps growing. The
file is opened once (non-blocking, so a FIFO cannot hang the open), judged by `fstat` of that open
descriptor (no stat-then-open race), and read at most `limit + 1` bytes, so memory stays bounded
whatever the path turns out to be.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from lab.errors import LabError

MIB = 1024 * 1024
_CHUNK = MIB

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def size_text(size: int) -> str:
    """`1 MiB`, `64 MiB`, `512 KiB`, `300 B`: a size as the error messages state limits."""
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB} MiB"
    if size >= MIB:
        return f"{size / MIB:.1f} MiB"
    if size >= 1024:
        return f"{size / 1024:.0f} KiB"
    return f"{size} B"


def read_limited(path: Path | str, limit: int, what: str, error: type[LabError] = LabError) -> bytes:
    """The bytes of the regular file `path`, at most `limit`; `error` if it is anything else or larger.

    `what` names the file in messages ("a scenario file"). FileNotFoundError and other OSErrors of
    the open are left to the caller, which knows what a missing file means for its command.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a plain file")
            raise error(f"{path}: is {kind}; {what} must be a regular file")
        if info.st_size > limit:
            raise error(f"{path}: {size_text(info.st_size)} is over the {size_text(limit)} limit for {what}")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:  # a file may grow after fstat (or report size 0, like /proc): count
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise error(f"{path}: more than {size_text(limit)}, the limit for {what}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` under a temporary name first, then rename: a report
    half-written by a Ctrl-C would be worse than the previous one. The temporary file has a fresh
    name (O_EXCL), so nothing planted in the folder is followed."""
    from lab.i18n import _

    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports are for reading
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        message = _("{path}: cannot write ({reason})")
        raise LabError(message.format(path=path, reason=exc.strerror or exc)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
