"""File output in one place: atomic writes, file hashes, safe file names.

Every file the package writes (splits, manifests, checkpoints, results, feature files,
heatmaps) goes through :func:`atomic_path`: the content is written to a temporary file in
the target's folder and moved into place with ``os.replace``, so a reader (or a run that
resumes after a crash) sees the old file or the complete new one, never half of one. An
interrupted write leaves at most a temporary file whose name :func:`is_temp_file`
recognises (``.{name}.r2t-{8 hex}.tmp``), which ``r2t compare`` removes on its next start.
An ``OSError`` of a write (disk full, permission denied) names the target file;
:func:`describe_os_error` turns one into a one-line message for the user.

Output files get the mode ``0o666`` filtered by the process umask, like any file opened
with ``open(path, "w")`` (the temporary file is created with that mode, not ``0o600``).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["TEMP_GLOB", "is_temp_file", "atomic_path", "atomic_write", "atomic_write_bytes",
           "atomic_write_text", "atomic_write_json", "atomic_torch_save", "atomic_h5",
           "sha256_file", "safe_name", "describe_os_error"]

TEMP_GLOB = ".*.r2t-*.tmp"
"""``Path.glob`` pattern of the temporary files :func:`atomic_path` creates."""

_TEMP = re.compile(r"\..*\.r2t-[0-9a-f]{8}\.tmp")
_NAME_KEEP = 120  # characters of the target's name kept in the temporary name (NAME_MAX is 255)


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_path` (e.g. left by a killed run)."""
    return _TEMP.fullmatch(Path(path).name) is not None


def _create_temp(folder: Path, name: str) -> Path:
    """A new empty file ``folder/.{name}.r2t-XXXXXXXX.tmp`` (mode 0o666 minus the umask)."""
    while True:
        tmp = folder / f".{name[:_NAME_KEEP]}.r2t-{secrets.token_hex(4)}.tmp"
        try:
            # the kernel applies the umask to 0o666, exactly as for open(path, "w")
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write to it inside the ``with`` block.

    On success the file is flushed to disk and renamed to ``path`` (parent folders are
    created); on any exception, KeyboardInterrupt included, it is removed and ``path`` is
    left as it was. An ``OSError`` that names no file, or the temporary one, is raised again
    naming ``path`` (same errno, so ``ENOSPC`` stays recognisable).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(path.parent, path.name)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno is None or exc.filename not in (None, str(tmp), tmp):
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` with a temporary file name, then move that file to ``path``."""
    with atomic_path(path) as tmp:
        write(str(tmp))
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (indented, keys sorted, a final newline) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically.

    Keep ``obj`` to tensors, dicts, lists and numbers, so that
    ``torch.load(path, weights_only=True)`` reads it back. The object is serialised in
    memory first, so a failed write (e.g. a full disk) is an ``OSError`` naming ``path``
    rather than a torch-internal error.
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


@contextmanager
def atomic_h5(path: str | os.PathLike) -> Iterator[Any]:
    """Yield an ``h5py.File`` open for writing; it is closed and moved to ``path`` on success."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        yield f


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path``, read in chunks of ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """``text`` with every run of characters unsafe in a file name replaced by ``-``."""
    return _UNSAFE.sub("-", text)


def describe_os_error(exc: OSError) -> str:
    """A one-line message for a failed file operation: what, which file, how to fix."""
    where = exc.filename if exc.filename is not None else "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on device while writing {where}; free some space (or choose an output "
                "folder on a larger disk) and run the same command again: finished runs are kept")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied for {where}; choose a folder you can write to, or fix its permissions"
    if exc.errno == errno.ENOENT:
        return f"no such file or folder: {where}; check the path"
    if exc.errno == errno.ENAMETOOLONG:
        return f"file name too long: {str(where)[:80]}...; use shorter names"
    return f"{exc.strerror or type(exc).__name__}: {where}"
