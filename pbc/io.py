"""Artefact I/O: atomic writes (temp file + rename) and safe loads.

Every file pbc writes goes through :func:`atomic_write`, so a crash leaves either the old
file or the new one, never half of one.  Every ``torch.load`` goes through
:func:`load_torch`, which uses ``weights_only=True`` and turns a refused or corrupt file into
a :class:`ArtefactError` naming it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import secrets
from pathlib import Path


class ArtefactError(Exception):
    """A run directory or artefact that cannot be used: one line naming the file."""


class StageError(ArtefactError):
    """A stage run out of order or on the wrong kind of run (the CLI exits with 2)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    For writers that want a file name (netCDF, ``torch.save``); on failure the temporary file
    is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the suffix: writers that infer the format from it (savefig);
    # created with mode 0666 less the process umask, the mode of any new file
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # the content reaches the disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text(path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_json(path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtefactError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtefactError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ArtefactError(f"{path}: not valid JSON lines ({e})") from None


def save_torch(path, obj) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    import torch  # here, not at the top: pbc.io serves torch-free readers too (codec, ArviZ)

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path, "wb") as f:
        f.write(buf.getbuffer())


def load_torch(path, map_location="cpu"):
    """``torch.load(weights_only=True)``; refuses pickled objects with a one-line error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours its message
        first = text.splitlines()[0] if text else "refused"
        raise ArtefactError(f"{path}: refused to load (only tensors and plain data are "
                            f"allowed): {first}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ArtefactError(f"{path}: unreadable checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
