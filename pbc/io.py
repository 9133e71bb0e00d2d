"""Artefact I/O: atomic writes, multi-file commits, safe loads, one-line errors.

* Every file pbc writes goes through :func:`atomic_write` / :func:`atomic_path`, so a crash
  leaves either the old file or the new one, never half of one.  Temporary files are hidden
  (``.<name>.<hex>.tmp<suffix>``), removed on failure, and :func:`sweep_temporaries` removes
  those a killed process left behind.
* A stage that writes several files that belong together stages them in a :class:`Commit`:
  every file is written and synced first, then a journal naming the renames is written
  atomically, then the renames are done.  A kill before the journal leaves the old set; a
  kill after it is rolled forward by :func:`recover` (the next command in that directory),
  which gives the new set.
* Every ``torch.load`` goes through :func:`load_torch`: the zip container's CRCs are checked
  first (``torch.load`` does not), then ``weights_only=True``; a refused, damaged or corrupt
  file is an :class:`ArtefactError` naming it.  :func:`read_json` and :func:`read_jsonl`
  refuse bytes that are not UTF-8 JSON, nesting deeper than :data:`MAX_JSON_DEPTH`, and
  JSON lines that are not objects.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import secrets
import shutil
import time
import zipfile
from pathlib import Path

#: deepest nesting of lists and objects accepted in a JSON artefact
MAX_JSON_DEPTH = 64
#: the journal of a multi-file commit in progress (see :class:`Commit`)
JOURNAL = ".pbc-commit.json"
#: temporaries older than this (seconds) are debris of a killed process
STALE_TEMPORARY_S = 600.0
#: the hidden name of a temporary file: ``.<name>.<8 hex>.tmp<suffix>``
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.tmp(\.[^./]*)?$")


class ArtefactError(Exception):
    """A run directory or artefact that cannot be used: one line naming the file."""


class StageError(ArtefactError):
    """A stage run out of order or on the wrong kind of run (the CLI exits with 2)."""


def first_line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def describe_os_error(e: OSError) -> str:
    """One line for an operating-system error: the file, then what went wrong
    (``runs/x/posterior.nc: No space left on device``)."""
    what = e.strerror or (errno.errorcode.get(e.errno, "") if e.errno else "") or str(e) \
        or type(e).__name__
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    line = f"{' → '.join(names)}: {what}" if names else what
    return line.splitlines()[0] if line else type(e).__name__


def _new_temporary(path: Path) -> Path:
    """Create (empty, exclusively) and return a hidden temporary file next to ``path``; the
    name keeps ``path``'s suffix for writers that infer the format from it (savefig)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            # created with mode 0666 less the process umask, the mode of any new file
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _name_the_file(e: BaseException, path: Path) -> None:
    """Give an OSError that names no file (a failed write or sync) the artefact's name."""
    if isinstance(e, OSError) and e.filename is None:
        e.filename = str(path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):    # not every file system syncs a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    For writers that want a file name (netCDF, ``torch.save``); on failure the temporary file
    is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
    try:
        yield tmp
        _fsync_file(tmp)   # the content reaches the disk before the rename
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _name_the_file(e, path)
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


def sha256_file(path) -> str:
    """The hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_free_space(directory, need_bytes: int, what: str) -> None:
    """Raise :class:`ArtefactError` (before anything is written) when the file system of
    ``directory`` has less than ``need_bytes`` free."""
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise ArtefactError(f"{directory}: no space left for {what} (needs about "
                            f"{_mb(need_bytes)}, {_mb(free)} free); nothing was written")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ------------------------------------------------------------------------- multi-file commit
class Commit:
    """Files of one directory written together: a crash leaves the old set or the new set.

    ``with Commit(run) as c:`` then write each file to ``c.path("name")`` (a hidden temporary
    file, already created; names may include a sub-folder such as ``figures/x.png``).  On
    success every file is synced, a journal (:data:`JOURNAL`) listing the renames is written
    atomically, the renames are done and the journal removed; :func:`recover` finishes the
    renames after a kill.  On failure the temporaries are removed and nothing changes.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self._staged: list[tuple[Path, Path]] = []

    def path(self, name: str) -> Path:
        final = self.directory / name
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temporary(final)
        self._staged.append((tmp, final))
        return tmp

    def __enter__(self) -> Commit:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._discard()
            return False
        try:
            for tmp, final in self._staged:
                try:
                    _fsync_file(tmp)
                except OSError as e:
                    _name_the_file(e, final)
                    raise
            rel = [[str(t.relative_to(self.directory)), str(f.relative_to(self.directory))]
                   for t, f in self._staged]
            write_json(self.directory / JOURNAL, {"renames": rel})
            _fsync_dir(self.directory)
        except BaseException:
            self._discard()
            raise
        recover(self.directory)
        return False

    def _discard(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _journal_renames(directory: Path, journal: Path) -> list[tuple[Path, Path]]:
    """The journal's renames, each confined to ``directory``; ArtefactError otherwise."""
    try:
        renames = json.loads(journal.read_text("utf-8"))["renames"]
        pairs = [(directory / src, directory / dst) for src, dst in renames]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ArtefactError(f"{journal}: unreadable commit journal ({type(e).__name__})") from None
    root = directory.resolve()
    for src, dst in pairs:
        inside = all(p.parent.resolve().is_relative_to(root) for p in (src, dst))
        if not inside or not TEMPORARY.match(src.name) or src.parent != dst.parent:
            raise ArtefactError(f"{journal}: commit journal names {src} → {dst}, outside "
                                f"{directory} or not a pbc temporary file")
    return pairs


def recover(directory) -> bool:
    """Finish a :class:`Commit` that a kill interrupted after its journal was written (the
    renames still to do are done); returns whether there was one.  Call it holding the
    directory's lock (:func:`pbc.lock.locked`)."""
    directory = Path(directory)
    journal = directory / JOURNAL
    if not journal.is_file():
        return False
    for src, dst in _journal_renames(directory, journal):
        if src.exists():
            os.replace(src, dst)
    _fsync_dir(directory)
    journal.unlink()
    _fsync_dir(directory)
    return True


def pending_commit(directory) -> bool:
    """Whether ``directory`` holds the journal of an unfinished :class:`Commit`."""
    return (Path(directory) / JOURNAL).is_file()


def sweep_temporaries(directory, max_age: float = STALE_TEMPORARY_S,
                      subdirs: tuple[str, ...] = ("figures",)) -> list[Path]:
    """Remove pbc temporary files older than ``max_age`` seconds from ``directory`` and its
    ``subdirs`` (debris of killed processes); returns what was removed."""
    directory, now, removed = Path(directory), time.time(), []
    for d in (directory, *(directory / s for s in subdirs)):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if TEMPORARY.match(p.name) and p.is_file() and not p.is_symlink() \
                        and now - p.stat().st_mtime > max_age:
                    p.unlink()
                    removed.append(p)
    return removed


# ------------------------------------------------------------------------------ safe loads
def _depth(obj) -> int:
    """Nesting depth of lists and dicts in a parsed JSON value (iteratively)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        value, d = todo.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                break
            todo.extend((v, d + 1) for v in (value.values() if isinstance(value, dict)
                                              else value))
    return deepest


def parse_json(text: str | bytes, where: str):
    """``json.loads`` for untrusted text: ArtefactError naming ``where`` for text that is not
    UTF-8 JSON or that nests deeper than :data:`MAX_JSON_DEPTH`."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text)
    except UnicodeDecodeError as e:
        raise ArtefactError(f"{where}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ArtefactError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise ArtefactError(f"{where}: JSON nested too deeply") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ArtefactError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ArtefactError(f"{path}: not found") from None
    except IsADirectoryError:
        raise ArtefactError(f"{path}: is a directory, not a file") from None


def read_json(path):
    """The JSON value in ``path`` (see :func:`parse_json`)."""
    path = Path(path)
    return parse_json(_read_bytes(path), str(path))


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file (``[]`` when it is absent); every line must be a JSON
    object."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for i, line in enumerate(_read_bytes(path).split(b"\n"), 1):
        if not line.strip():
            continue
        record = parse_json(line, f"{path}: line {i}")
        if not isinstance(record, dict):
            raise ArtefactError(f"{path}: line {i} is a JSON {type(record).__name__}, "
                                f"not an object")
        records.append(record)
    return records


def save_torch(path, obj) -> None:
    """``torch.save`` through a temporary file and an atomic rename."""
    import torch  # here, not at the top: pbc.io serves torch-free readers too (codec, ArviZ)

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_write(path, "wb") as f:
        f.write(buf.getbuffer())


def verify_zip(path) -> None:
    """Check every member's CRC-32 of a zip container (``torch.save``'s format); a damaged
    file is an ArtefactError naming the member.  Files that are not zip archives pass (the
    loader then refuses them)."""
    path = Path(path)
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError,
            NotImplementedError) as e:
        raise ArtefactError(f"{path}: damaged file ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise ArtefactError(f"{path}: cannot read ({describe_os_error(e)})") from None
    if bad is not None:
        raise ArtefactError(f"{path}: damaged file: {bad} fails its CRC check "
                            f"(the file was altered or corrupted)")


def load_torch(path, map_location="cpu"):
    """``torch.load(weights_only=True)`` after :func:`verify_zip`; refuses pickled objects
    and damaged files with a one-line error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtefactError(f"{path}: not found")
    verify_zip(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours its message
        first = text.splitlines()[0] if text else "refused"
        raise ArtefactError(f"{path}: refused to load (only tensors and plain data are "
                            f"allowed): {first}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError, RecursionError, MemoryError) as e:
        raise ArtefactError(f"{path}: unreadable checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
