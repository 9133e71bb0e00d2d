"""Datasets: MNIST and Fashion-MNIST (IDX files) and CIFAR-10 (python pickle batches).

Formats
-------
IDX (MNIST, Fashion-MNIST): a 4-byte magic number ``00 00 TT DD`` (``TT`` the element type,
only ``0x08`` = uint8 is accepted; ``DD`` the number of dimensions), then ``DD`` big-endian
uint32 sizes, then the row-major payload. Images are ``(N, 28, 28)`` (3 dims), labels ``(N,)``
(1 dim). Files are ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each raw or ``.gz``.

CIFAR-10 python version: the folder ``cifar-10-batches-py/`` holds ``data_batch_1`` ..
``data_batch_5`` and ``test_batch``, pickled dicts with ``data`` (uint8 ``(n, 3072)``, 1024 red,
then green, then blue values of a 32x32 image, row-major) and ``labels`` (list of int).
The pickles are read with a restricted unpickler that resolves only the few globals a
numpy array needs, so an untrusted file cannot run code.

A dataset's directory is looked up in: the explicit ``data_dir`` (or ``data_dir/<name>``),
``$PBC_DATA`` (or ``$PBC_DATA/<name>``), the user cache ``$XDG_CACHE_HOME/pbc/<name>``
(default ``~/.cache/pbc/<name>``) and ``/usr/share/datasets/<name>`` (Debian's
``dataset-fashion-mnist``).  An explicit ``data_dir`` is searched alone: one that does not
hold the files is an error, never a reason to use other data.  Images become float32 in
``[0, 1]`` with shape ``(N, C, H, W)``.

Sizes are checked before memory is taken: an IDX header may declare at most
:data:`MAX_IDX_BYTES` of payload, images must be 28x28 before their payload is read, and no
more than the declared payload (and one byte, to detect trailing data) is decompressed, so a
small gzip file cannot expand beyond what its header says.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import importlib
import math
import os
import pathlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from pbc.defaults import DATASETS
from pbc.io import atomic_write

NUM_CLASSES = 10
SYSTEM_DATA_DIR = pathlib.Path("/usr/share/datasets")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
# First ten training labels of the real files: loading one dataset's files under the other's
# name (both use the same file names) is refused instead of silently training on the wrong data.
_SIGNATURES = {
    "mnist": (5, 0, 4, 1, 9, 2, 1, 3, 1, 4),
    "fashion-mnist": (9, 0, 0, 3, 0, 2, 7, 2, 5, 5),
}


class DataError(Exception):
    """A data problem: a one-line message naming the file and what is wrong."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset; images float32 ``(N, C, H, W)`` in ``[0, 1]``, labels int64 ``(N,)``."""

    name: str
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_classes: int
    source: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))


class _Remote(NamedTuple):
    url: str
    filename: str
    kind: str  # name of the hashlib algorithm the digest was published with
    digest: str


def _idx_remotes(base: str, md5s: tuple[str, ...]) -> list[_Remote]:
    pairs = zip(IDX_FILES, md5s, strict=True)
    return [_Remote(f"{base}{f}.gz", f"{f}.gz", "md5", d) for f, d in pairs]


# md5 digests (not sha256) as published by torchvision for the upstream .gz / .tar.gz files.
_DOWNLOADS: dict[str, list[_Remote]] = {
    "mnist": _idx_remotes("https://ossci-datasets.s3.amazonaws.com/mnist/", (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
    "fashion-mnist": _idx_remotes("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
    "cifar10": [
        _Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "cifar-10-python.tar.gz", "md5", "c58f30108f718f92721af3b95e74349a")
    ],
}


# ----------------------------------------------------------------------------- look-up
def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def _cache_dir(name: str) -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(root) / "pbc" / name


def candidate_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
    """Directories searched for a dataset, in order of precedence.

    Parameters
    ----------
    name : str
        Dataset name, one of `DATASETS`.
    data_dir : str or os.PathLike, optional
        Explicit directory (it, then ``data_dir/<name>``, come first).

    Returns
    -------
    list of pathlib.Path
        Candidates, duplicates removed; they need not exist.
    """
    _check_name(name)
    dirs: list[pathlib.Path] = []
    if data_dir is not None:
        dirs += [pathlib.Path(data_dir), pathlib.Path(data_dir) / name]
    env = os.environ.get("PBC_DATA")
    if env:
        dirs += [pathlib.Path(env) / name, pathlib.Path(env)]
    dirs += [_cache_dir(name), SYSTEM_DATA_DIR / name]
    return list(dict.fromkeys(d.expanduser() for d in dirs))


def _idx_path(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
    for p in (directory / stem, directory / (stem + ".gz")):
        if p.is_file():
            return p
    return None


def _cifar_folder(directory: pathlib.Path) -> pathlib.Path | None:
    if (directory / CIFAR_FOLDER).is_dir():
        return directory / CIFAR_FOLDER
    if directory.name == CIFAR_FOLDER or (directory / "test_batch").is_file():
        return directory
    return None


def _qualifies(name: str, directory: pathlib.Path) -> bool:
    if not directory.is_dir():
        return False
    if name == "cifar10":
        return _cifar_folder(directory) is not None
    return all(_idx_path(directory, f) is not None for f in IDX_FILES)


def _not_found_message(name: str, dirs: list[pathlib.Path],
                       explicit: list[pathlib.Path] | None = None) -> str:
    if explicit:   # an explicit directory is searched alone: say where else pbc would look
        others = [d for d in dirs if d not in explicit]
        searched = (f"searched: {', '.join(map(str, explicit))} (an explicit --data-dir is "
                    f"searched alone; without it: {', '.join(map(str, others))})")
    else:
        searched = f"searched: {', '.join(map(str, dirs))}"
    if name == "cifar10":
        needed = f"{CIFAR_FOLDER}/{{{','.join(CIFAR_FILES)}}} (from cifar-10-python.tar.gz)"
    else:
        needed = ", ".join(f + "[.gz]" for f in IDX_FILES)
    how = f"--data-dir DIR or $PBC_DATA=DIR (DIR or DIR/{name} holding them)"
    if name == "fashion-mnist":
        how += ", `apt-get install dataset-fashion-mnist`"
    return (f"{name}: data files not found; needed: {needed}; {searched}; supply them with "
            f"{how}, or use --download when online")


def find_data_dir(name: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Return the first candidate directory holding the dataset's files; with ``data_dir``
    only ``data_dir`` and ``data_dir/<name>`` are candidates.

    Raises
    ------
    DataError
        If the name is unknown or no candidate qualifies (message says what and where).
    """
    dirs = candidate_dirs(name, data_dir)
    if data_dir is not None:
        given = pathlib.Path(data_dir).expanduser()
        explicit = [given, given / name]
        if not given.is_dir():
            what = "is not a directory" if given.exists() or given.is_symlink() else \
                "does not exist"
            raise DataError(f"--data-dir {given} {what}; "
                            f"{_not_found_message(name, dirs, explicit)}")
        for d in explicit:
            if _qualifies(name, d):
                return d
        raise DataError(_not_found_message(name, dirs, explicit))
    for d in dirs:
        if _qualifies(name, d):
            return d
    raise DataError(_not_found_message(name, dirs))


# ----------------------------------------------------------------------------- IDX
#: the most payload an IDX header may declare: 1.4 times MNIST's training images (47 MB)
MAX_IDX_BYTES = 1 << 26


def _open(path: pathlib.Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _read_exact(f, n: int) -> bytes:
    """Read up to `n` bytes in chunks (never allocating more than the data present)."""
    chunks, left = [], n
    while left > 0 and (chunk := f.read(min(left, 1 << 24))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _parse_idx(path: pathlib.Path, f, ndim: int | None,
               tail: tuple[int, ...] | None = None) -> np.ndarray:
    """Header, checks, then at most the payload the header declares (a gzip stream is never
    decompressed further).  ``tail``: the dimensions after the first that the caller needs."""
    magic = _read_exact(f, 4)
    if not magic:
        raise DataError(f"{path}: empty file")
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08:
        raise DataError(f"{path}: not a uint8 IDX file (magic number {magic.hex()!r}, "
                        "expected 000008NN)")
    nd = magic[3]
    if nd == 0 or (ndim is not None and nd != ndim):
        raise DataError(f"{path}: IDX header has {nd} dimensions, expected {ndim or '>= 1'}")
    head = _read_exact(f, 4 * nd)
    if len(head) < 4 * nd:
        raise DataError(f"{path}: truncated IDX header ({4 + len(head)} of {4 + 4 * nd} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(head, ">u4"))
    if tail is not None and dims[1:] != tail:
        raise DataError(f"{path}: IDX header declares items of shape "
                        f"{'x'.join(map(str, dims[1:]))}, expected {'x'.join(map(str, tail))}")
    expected = math.prod(dims)
    if expected > MAX_IDX_BYTES:
        raise DataError(f"{path}: IDX header {dims} claims {expected} bytes, over the limit "
                        f"of {MAX_IDX_BYTES}")
    payload = _read_exact(f, expected + 1)
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "trailing bytes"
        size = len(payload) if len(payload) <= expected else "more than " + str(expected)
        raise DataError(f"{path}: {what}: payload has {size} bytes, header {dims} needs "
                        f"{expected}")
    return np.frombuffer(payload, np.uint8).reshape(dims).copy()


def read_idx(path: str | os.PathLike, ndim: int | None = None,
             tail: tuple[int, ...] | None = None) -> np.ndarray:
    """Read and validate a uint8 IDX file (raw or gzip).

    Parameters
    ----------
    path : str or os.PathLike
        The file; gzip-compressed when the name ends with ``.gz``.
    ndim : int, optional
        Required number of dimensions.
    tail : tuple of int, optional
        Required dimensions after the first (checked before the payload is read).

    Returns
    -------
    numpy.ndarray
        uint8 array of the shape stored in the header.

    Raises
    ------
    DataError
        Unreadable or corrupt file, bad magic number, wrong ndim, payload length mismatch.
    """
    path = pathlib.Path(path)
    try:
        with _open(path) as f:
            return _parse_idx(path, f, ndim, tail)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, gzip-compressed when `path` ends with ``.gz``."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx needs a uint8 array with 1..255 dims, got {array.dtype}")
    blob = (bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + np.ascontiguousarray(array).tobytes())
    path = pathlib.Path(path)
    if path.name.endswith(".gz"):
        blob = gzip.compress(blob, mtime=0)
    with atomic_write(path) as f:
        f.write(blob)


def _load_idx_split(name: str, d: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    ipath = _idx_path(d, f"{split}-images-idx3-ubyte")
    lpath = _idx_path(d, f"{split}-labels-idx1-ubyte")
    if ipath is None or lpath is None:
        missing = f"{split}-{'images-idx3' if ipath is None else 'labels-idx1'}-ubyte[.gz]"
        raise DataError(f"{d / missing}: missing {name} file")
    images, labels = read_idx(ipath, ndim=3, tail=(28, 28)), read_idx(lpath, ndim=1)
    if images.shape[0] == 0:
        raise DataError(f"{ipath}: holds no images")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{lpath}: {labels.shape[0]} labels for {images.shape[0]} images "
                        f"in {ipath.name}")
    _check_labels(lpath, labels)
    return images, labels


def _check_labels(path: pathlib.Path, labels: np.ndarray) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in [0, {NUM_CLASSES - 1}], found "
                        f"{int(labels.min())}..{int(labels.max())}")


def _check_not_swapped(name: str, d: pathlib.Path, train_y: np.ndarray) -> None:
    head = tuple(int(v) for v in train_y[:10])
    for other, sig in _SIGNATURES.items():
        if other != name and train_y.shape[0] == 60000 and head == sig:
            raise DataError(f"{d}: these are {other} files (first labels {head}), not {name}")


# ----------------------------------------------------------------------------- CIFAR-10
def _numpy_private(name: str):
    """``numpy._core`` (numpy >= 2) or ``numpy.core`` helper used by ndarray pickles."""
    module = "multiarray" if name == "_reconstruct" else "numeric"
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except (ImportError, AttributeError):  # numpy < 2
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed for dicts of numpy arrays and lists."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("__builtin__", "bytes"), ("builtins", "bytes"),
    }

    def __init__(self, file, path: pathlib.Path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DataError(f"{self._path}: refusing to unpickle forbidden global {module}.{name}")
        if name in ("_reconstruct", "_frombuffer"):
            return _numpy_private(name)
        return {"ndarray": np.ndarray, "dtype": np.dtype, "encode": codecs.encode,
                "bytes": bytes}[name]


def _get(batch: dict, key: str):
    return batch[key.encode()] if key.encode() in batch else batch.get(key)


def _load_cifar_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing CIFAR-10 batch file")
    try:
        with open(path, "rb") as f:
            batch = _RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # any failure to parse untrusted input is a data problem
        raise DataError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})") \
            from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: CIFAR-10 batch is a {type(batch).__name__}, expected a dict")
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else repr(type(data))
        raise DataError(f"{path}: 'data' must be uint8 (n, 3072), got {desc}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: 'labels' is not a list of integers") from None
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {labels.size} labels for {data.shape[0]} images")
    _check_labels(path, labels)
    return data.reshape(-1, 3, 32, 32), labels


def write_cifar_batches(directory: str | os.PathLike, train: tuple[np.ndarray, np.ndarray],
                        test: tuple[np.ndarray, np.ndarray], n_train_batches: int = 5) -> None:
    """Write ``data_batch_1..n`` and ``test_batch`` in the CIFAR-10 python pickle layout.

    Parameters
    ----------
    directory : str or os.PathLike
        Destination folder (created), normally ``.../cifar-10-batches-py``.
    train, test : tuple of numpy.ndarray
        ``(images, labels)``; images uint8 ``(n, 3072)`` or ``(n, 3, 32, 32)``.
    n_train_batches : int
        Number of training batches the training set is split into.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    xs = np.array_split(np.asarray(train[0], np.uint8).reshape(len(train[0]), -1), n_train_batches)
    ys = np.array_split(np.asarray(train[1]), n_train_batches)
    parts = [(f"data_batch_{i + 1}", x, y) for i, (x, y) in enumerate(zip(xs, ys, strict=True))]
    parts.append(("test_batch", np.asarray(test[0], np.uint8).reshape(len(test[0]), -1), test[1]))
    for fname, x, y in parts:
        batch = {b"batch_label": fname.encode(), b"data": x,
                 b"labels": [int(v) for v in np.asarray(y)]}
        with atomic_write(directory / fname) as f:
            pickle.dump(batch, f, protocol=2)


# ----------------------------------------------------------------------------- download
def write_synthetic_dataset(directory: str | os.PathLike, name: str = "fashion-mnist",
                            n_train: int = 200, n_test: int = 100, seed: int = 0
                            ) -> pathlib.Path:
    """A tiny learnable stand-in for ``name`` in its own file format (smoke runs, tests).

    Images are noise with a bright block whose position encodes the label (class ``k`` lights
    block ``divmod(k, 5)``): IDX files for ``mnist``/``fashion-mnist``, python batches under
    ``cifar-10-batches-py`` for ``cifar10``.  Returns the directory to pass as ``--data-dir``.
    """
    _check_name(name)
    rng = np.random.default_rng(seed)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    side, channels = (32, 3) if name == "cifar10" else (28, 1)
    splits = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, channels, side, side)).astype(np.uint8)
        for i, k in enumerate(labels):
            r, c = divmod(int(k), 5)
            images[i, :, 4 + 10 * r: 12 + 10 * r, 2 + 5 * c: 6 + 5 * c] = 250
        splits[split] = (images, labels)
    if name == "cifar10":
        write_cifar_batches(directory / "cifar-10-batches-py", splits["train"], splits["t10k"])
        return directory
    for split, (images, labels) in splits.items():
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images[:, 0])
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels)
    return directory


def _fetch(remote: _Remote, dest: pathlib.Path) -> None:
    """Download `remote` to `dest` atomically, verifying its checksum first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.new(remote.kind)
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(remote.url, timeout=60) as resp:
                    while chunk := resp.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            except Exception as e:  # URLError, HTTPError, timeouts, connection resets
                raise DataError(
                    f"download of {remote.url} failed ({type(e).__name__}: {e}); fetch it by hand "
                    f"and put it in {dest.parent} or pass --data-dir DIR / set $PBC_DATA"
                ) from None
        if digest.hexdigest() != remote.digest:
            raise DataError(f"{remote.url}: {remote.kind} checksum mismatch (got "
                            f"{digest.hexdigest()}, expected {remote.digest}); file discarded")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _extract_cifar(tar_path: pathlib.Path, dest: pathlib.Path) -> None:
    """Extract the CIFAR folder from `tar_path` into `dest`, refusing unsafe members."""
    tmp = pathlib.Path(tempfile.mkdtemp(dir=dest, prefix=".extract."))
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = pathlib.PurePosixPath(m.name).parts
                if (m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir())
                        or not parts or parts[0] != CIFAR_FOLDER):
                    raise DataError(f"{tar_path}: unsafe or unexpected archive member {m.name!r}")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **kwargs)
        shutil.rmtree(dest / CIFAR_FOLDER, ignore_errors=True)
        os.replace(tmp / CIFAR_FOLDER, dest / CIFAR_FOLDER)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{tar_path}: cannot extract ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(name: str) -> pathlib.Path:
    dest = _cache_dir(name)
    for remote in _DOWNLOADS[name]:
        if name == "cifar10":
            tar_path = dest / remote.filename
            _fetch(remote, tar_path)
            _extract_cifar(tar_path, dest)
            tar_path.unlink()
        elif _idx_path(dest, remote.filename.removesuffix(".gz")) is None:
            _fetch(remote, dest / remote.filename)
    return dest


# ----------------------------------------------------------------------------- entry point
def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).to(torch.float32).div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x


def load_dataset(name: str, data_dir: str | os.PathLike | None = None,
                 download: bool = False, train: bool = True) -> Dataset:
    """Find, validate and load a dataset.

    Parameters
    ----------
    name : str
        One of ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``.
    data_dir : str or os.PathLike, optional
        Directory searched first (see `candidate_dirs`).
    download : bool
        If nothing is found, download into the user cache (checksum-verified).
    train : bool
        Read the training split; without it ``train_x`` and ``train_y`` are empty
        (``(0, C, H, W)`` and ``(0,)``) and only the test files are read.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        Unknown name, files not found (and no download), download failure, invalid files.
    """
    _check_name(name)
    try:
        d = find_data_dir(name, data_dir)
    except DataError:
        if not download:
            raise
        d = _download(name)
    if name == "cifar10":
        folder = _cifar_folder(d) or d / CIFAR_FOLDER
        files = CIFAR_FILES if train else CIFAR_FILES[-1:]
        batches = [_load_cifar_batch(folder / f) for f in files]
        test_x, test_y = batches[-1]
        train_x = np.concatenate([b[0] for b in batches[:-1]] or [test_x[:0]])
        train_y = np.concatenate([b[1] for b in batches[:-1]] or [test_y[:0]])
    else:
        test_x, test_y = _load_idx_split(name, d, "t10k")
        if train:
            train_x, train_y = _load_idx_split(name, d, "train")
            _check_not_swapped(name, d, train_y)
        else:
            train_x, train_y = test_x[:0], test_y[:0]
    return Dataset(name=name, train_x=_to_tensor(train_x),
                   train_y=torch.from_numpy(train_y.astype(np.int64)),
                   test_x=_to_tensor(test_x), test_y=torch.from_numpy(test_y.astype(np.int64)),
                   num_classes=NUM_CLASSES, source=str(d))


# ---------------------------------------------------------------------------- validation split
VAL_SEED_OFFSET = 104_729   # the split's generator is seeded apart from the run's own RNG


def default_val_size(n_train: int) -> int:
    """Examples held out for validation when none is asked for: 5,000 of a 60,000-image
    training set (MNIST, Fashion-MNIST), 10% of any other."""
    return 5000 if n_train == 60_000 else max(1, round(0.1 * n_train))


@dataclass(frozen=True, eq=False)
class Splits(Dataset):
    """A dataset split for one run: ``train`` (what the optimiser sees), ``val`` (what every
    choice is made on; empty when ``val = 0``) and ``test`` (reported numbers only).
    Images ``(N, C, H, W)`` float32, labels ``(N,)`` int64."""

    val_x: torch.Tensor = field(repr=False)
    val_y: torch.Tensor = field(repr=False)


def validation_indices(n: int, val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` indices into ``n`` training examples: ``val`` of them drawn without
    replacement by a generator seeded from ``seed`` alone (the same split for every stage of
    a run, whatever the RNG state), both ascending and disjoint."""
    if not 0 <= val < n:
        raise ValueError(f"--val must be in [0, {n - 1}] for {n} training examples, got {val}")
    gen = torch.Generator().manual_seed(seed + VAL_SEED_OFFSET)
    perm = torch.randperm(n, generator=gen)
    return perm[val:].sort().values, perm[:val].sort().values


def split(data: Dataset, val: int, seed: int, subset: int | None = None) -> Splits:
    """Hold ``val`` examples of ``data``'s training set (its first ``subset`` when given) out
    for validation (:func:`validation_indices`)."""
    x, y = data.train_x, data.train_y
    if subset:
        x, y = x[:subset], y[:subset]
    train_idx, val_idx = validation_indices(x.shape[0], val, seed)
    return Splits(name=data.name, train_x=x[train_idx], train_y=y[train_idx],
                  test_x=data.test_x, test_y=data.test_y, num_classes=data.num_classes,
                  source=data.source, val_x=x[val_idx], val_y=y[val_idx])
