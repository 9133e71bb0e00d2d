"""Tests for pbc.data: IDX and CIFAR-10 reading, validation, look-up order and download."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pathlib
import pickle
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from pbc import data
from pbc.data import (
    DATASETS,
    DataError,
    candidate_dirs,
    find_data_dir,
    load_dataset,
    read_idx,
    write_cifar_batches,
    write_idx,
)

N_TRAIN, N_TEST = 20, 10
FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Point HOME, XDG_CACHE_HOME and the system directory into tmp_path; clear $PBC_DATA."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PBC_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")


def make_idx(directory, gz=False, n_train=N_TRAIN, n_test=N_TEST, seed=0, size=28):
    """Write a tiny IDX dataset; return ((train_x, train_y), (test_x, test_y)) as uint8."""
    rng = np.random.default_rng(seed)
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = []
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(directory / f"{split}-images-idx3-ubyte{ext}", x)
        write_idx(directory / f"{split}-labels-idx1-ubyte{ext}", y)
        out.append((x, y))
    return tuple(out)


def make_cifar(directory, seed=0):
    rng = np.random.default_rng(seed)
    train = (rng.integers(0, 256, (N_TRAIN, 3072), dtype=np.uint8), rng.integers(0, 10, N_TRAIN))
    test = (rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8), rng.integers(0, 10, N_TEST))
    write_cifar_batches(pathlib.Path(directory) / "cifar-10-batches-py", train, test)
    return train, test


def expect_error(match_file, *args, **kwargs):
    with pytest.raises(DataError) as info:
        load_dataset(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(match_file) in msg, msg
    return msg


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    (trx, try_), (tex, tey) = make_idx(tmp_path / "d", gz=gz)
    ds = load_dataset("mnist", tmp_path / "d")
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.source == str(tmp_path / "d")
    assert ds.train_x.shape == (N_TRAIN, 1, 28, 28) and ds.test_x.shape == (N_TEST, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
    np.testing.assert_allclose(ds.train_x[:, 0].numpy() * 255, trx, atol=1e-3)
    np.testing.assert_allclose(ds.test_x[:, 0].numpy() * 255, tex, atol=1e-3)
    np.testing.assert_array_equal(ds.train_y.numpy(), try_)
    np.testing.assert_array_equal(ds.test_y.numpy(), tey)


def test_read_idx_generic(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    with pytest.raises(ValueError):
        write_idx(tmp_path / "b", arr.astype(np.int32))


def test_mixed_raw_and_gz(tmp_path):
    make_idx(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
        gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert load_dataset("fashion-mnist", tmp_path).test_y.shape == (N_TEST,)


def test_cifar_round_trip(tmp_path):
    (trx, try_), (tex, tey) = make_cifar(tmp_path / "c")
    for where in (tmp_path / "c", tmp_path / "c" / "cifar-10-batches-py"):
        ds = load_dataset("cifar10", where)
        assert ds.train_x.shape == (N_TRAIN, 3, 32, 32) and ds.test_x.shape == (N_TEST, 3, 32, 32)
        assert ds.input_shape == (3, 32, 32)
        np.testing.assert_allclose(ds.train_x.reshape(N_TRAIN, -1).numpy() * 255, trx, atol=1e-3)
        np.testing.assert_allclose(ds.test_x.reshape(N_TEST, -1).numpy() * 255, tex, atol=1e-3)
        np.testing.assert_array_equal(ds.train_y.numpy(), try_)
        np.testing.assert_array_equal(ds.test_y.numpy(), tey)


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_str_keys_and_protocols(tmp_path, protocol):
    make_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    x = np.zeros((3, 3072), np.uint8)
    blob = pickle.dumps({"data": x, "labels": [1, 2, 3]}, protocol=protocol)
    (folder / "test_batch").write_bytes(blob)
    assert load_dataset("cifar10", tmp_path).test_y.tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------- look-up
def test_lookup_order(tmp_path, monkeypatch):
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", tmp_path / "cache" / "pbc"
    make_idx(explicit / "mnist", seed=1)
    make_idx(env, seed=2)  # $PBC_DATA is the dataset directory itself
    make_idx(cache / "mnist", seed=3)
    monkeypatch.setenv("PBC_DATA", str(env))
    assert load_dataset("mnist", explicit).source == str(explicit / "mnist")
    assert find_data_dir("mnist") == env
    monkeypatch.setenv("PBC_DATA", str(tmp_path / "nowhere"))
    assert find_data_dir("mnist") == cache / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    make_idx(tmp_path / "home" / ".cache" / "pbc" / "mnist", seed=4)
    assert find_data_dir("mnist") == tmp_path / "home" / ".cache" / "pbc" / "mnist"


def test_pbc_data_parent(tmp_path, monkeypatch):
    make_idx(tmp_path / "root" / "fashion-mnist")
    monkeypatch.setenv("PBC_DATA", str(tmp_path / "root"))
    assert find_data_dir("fashion-mnist") == tmp_path / "root" / "fashion-mnist"
    cands = candidate_dirs("fashion-mnist", tmp_path / "x")
    assert cands[:2] == [tmp_path / "x", tmp_path / "x" / "fashion-mnist"]
    assert cands[-1] == tmp_path / "system" / "fashion-mnist"


def test_system_dir_used_last(tmp_path):
    make_idx(tmp_path / "system" / "mnist")
    assert find_data_dir("mnist") == tmp_path / "system" / "mnist"


def test_nothing_found_message(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path / "given")
    msg = str(info.value)
    for needed in data.IDX_FILES:
        assert needed in msg
    for searched in (tmp_path / "given", tmp_path / "cache" / "pbc" / "mnist"):
        assert str(searched) in msg
    assert "--data-dir" in msg and "$PBC_DATA" in msg and "--download" in msg
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset("cifar10")


def test_unknown_name():
    with pytest.raises(DataError) as info:
        load_dataset("imagenet")
    assert all(n in str(info.value) for n in DATASETS)


# ----------------------------------------------------------------------------- IDX errors
def _rewrite(path, blob):
    path = pathlib.Path(path)
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)


def _header(ndim, dims, code=0x08):
    return bytes([0, 0, code, ndim]) + np.asarray(dims, ">u4").tobytes()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "blob, fragment",
    [
        (b"", "empty file"),
        (b"\x01\x00\x08\x03", "magic"),
        (b"\x00\x00\x0d\x03", "magic"),  # float type code
        (_header(2, (N_TRAIN, 784)) + bytes(N_TRAIN * 784), "dimensions"),
        (_header(3, (N_TRAIN, 28)), "truncated IDX header"),
        (_header(3, (N_TRAIN, 28, 28)) + bytes(N_TRAIN * 784 - 5), "truncated"),
        (_header(3, (N_TRAIN, 28, 28)) + bytes(N_TRAIN * 784 + 3), "trailing bytes"),
        (_header(3, (N_TRAIN, 27, 28)) + bytes(N_TRAIN * 27 * 28), "28x28"),
        (_header(3, (N_TRAIN + 1, 28, 28)) + bytes((N_TRAIN + 1) * 784), "labels for"),
        (_header(3, (0, 28, 28)), "no images"),
    ],
)
def test_bad_train_images(tmp_path, gz, blob, fragment):
    make_idx(tmp_path, gz=gz)
    bad = tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}"
    _rewrite(bad, blob)
    named = tmp_path / "train-labels-idx1-ubyte" if fragment == "labels for" else bad
    msg = expect_error(named, "mnist", tmp_path)
    assert fragment in msg


def test_label_out_of_range(tmp_path):
    make_idx(tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    write_idx(bad, np.array([0, 1, 10] + [0] * (N_TEST - 3), np.uint8))
    assert "[0, 9]" in expect_error(bad, "mnist", tmp_path)


def test_wrong_label_ndim(tmp_path):
    make_idx(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte"
    write_idx(bad, np.zeros((N_TRAIN, 1), np.uint8))
    assert "dimensions" in expect_error(bad, "mnist", tmp_path)


@pytest.mark.parametrize("corrupt", [b"not gzip at all", "truncate", "flip"])
def test_corrupt_gzip(tmp_path, corrupt):
    make_idx(tmp_path, gz=True)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    blob = bad.read_bytes()
    if corrupt == "truncate":
        blob = blob[: len(blob) // 2]
    elif corrupt == "flip":
        mid = len(blob) // 2
        blob = blob[:mid] + bytes(b ^ 0xFF for b in blob[mid : mid + 20]) + blob[mid + 20 :]
    else:
        blob = corrupt
    bad.write_bytes(blob)
    msg = expect_error(bad, "mnist", tmp_path)
    assert corrupt == "flip" or "cannot read" in msg


def test_swapped_dataset_refused(tmp_path):
    make_idx(tmp_path)
    labels = np.resize(np.array([5, 0, 4, 1, 9, 2, 1, 3, 1, 4], np.uint8), 60000)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((60000, 28, 28), np.uint8))
    assert "mnist files" in expect_error(tmp_path, "fashion-mnist", tmp_path)
    assert load_dataset("mnist", tmp_path).train_y.shape == (60000,)


# ----------------------------------------------------------------------------- CIFAR errors
def test_missing_cifar_batch(tmp_path):
    make_cifar(tmp_path)
    missing = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    missing.unlink()
    assert "missing" in expect_error(missing, "cifar10", tmp_path)


@pytest.mark.parametrize(
    "batch, fragment",
    [
        ({b"data": np.zeros((3, 3071), np.uint8), b"labels": [0, 1, 2]}, "(n, 3072)"),
        ({b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 1, 2]}, "(n, 3072)"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, "labels for"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 10]}, "[0, 9]"),
        ({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, b"x", 1]}, "labels"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_bad_cifar_batch(tmp_path, batch, fragment):
    make_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(pickle.dumps(batch, protocol=2))
    assert fragment in expect_error(bad, "cifar10", tmp_path)


def test_cifar_truncated_pickle(tmp_path):
    make_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(bad.read_bytes()[:100])
    assert "not a readable" in expect_error(bad, "cifar10", tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_forbidden_global(tmp_path, protocol):
    make_cifar(tmp_path)
    marker = tmp_path / "executed"
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    payload = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _Evil(marker)}
    bad.write_bytes(pickle.dumps(payload, protocol=protocol))
    msg = expect_error(bad, "cifar10", tmp_path)
    assert "forbidden global" in msg and "system" in msg
    assert not marker.exists()


# ----------------------------------------------------------------------------- download
@pytest.fixture
def served(tmp_path, monkeypatch):
    """Serve URL -> bytes from a dict through a fake urllib.request.urlopen."""
    files: dict[str, bytes] = {}

    def fake_urlopen(url, timeout=None):
        if url not in files:
            raise urllib.error.URLError("no route to host")
        return io.BytesIO(files[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return files


def _synthetic_remotes(tmp_path, name, base="https://example.invalid/"):
    src = tmp_path / "src"
    make_idx(src, gz=True)
    files, remotes = {}, []
    for stem in data.IDX_FILES:
        blob = (src / f"{stem}.gz").read_bytes()
        files[base + stem + ".gz"] = blob
        md5 = hashlib.md5(blob).hexdigest()
        remotes.append(data._Remote(base + stem + ".gz", stem + ".gz", "md5", md5))
    return files, remotes


def test_download_checksum_match(tmp_path, monkeypatch, served):
    files, remotes = _synthetic_remotes(tmp_path, "mnist")
    served.update(files)
    monkeypatch.setitem(data._DOWNLOADS, "mnist", remotes)
    ds = load_dataset("mnist", download=True)
    cache = tmp_path / "cache" / "pbc" / "mnist"
    assert ds.source == str(cache) and ds.train_x.shape == (N_TRAIN, 1, 28, 28)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f + ".gz" for f in data.IDX_FILES)


def test_download_checksum_mismatch(tmp_path, served):
    files, _ = _synthetic_remotes(tmp_path, "mnist")
    real = data._DOWNLOADS["mnist"]
    for r, blob in zip(real, files.values(), strict=True):
        served[r.url] = blob  # real URLs, real md5 digests, synthetic bytes
    with pytest.raises(DataError, match="md5 checksum mismatch"):
        load_dataset("mnist", download=True)
    cache = tmp_path / "cache" / "pbc" / "mnist"
    assert not any(cache.iterdir())  # nothing kept, no temp file left behind


def test_download_network_failure(tmp_path, served):
    with pytest.raises(DataError, match="download of .* failed.*by hand"):
        load_dataset("fashion-mnist", download=True)


def test_no_download_without_flag(tmp_path, served):
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist")


def _cifar_tar(tmp_path, extra=None):
    make_cifar(tmp_path / "tarsrc")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "tarsrc" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        if extra:
            info = tarfile.TarInfo(extra)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    return buf.getvalue()


@pytest.mark.parametrize("extra", [None, "../escape", "cifar-10-batches-py/../../escape"])
def test_download_cifar(tmp_path, monkeypatch, served, extra):
    blob = _cifar_tar(tmp_path, extra)
    url = "https://example.invalid/cifar-10-python.tar.gz"
    served[url] = blob
    remote = data._Remote(url, "cifar-10-python.tar.gz", "md5", hashlib.md5(blob).hexdigest())
    monkeypatch.setitem(data._DOWNLOADS, "cifar10", [remote])
    if extra is None:
        ds = load_dataset("cifar10", download=True)
        assert ds.train_x.shape == (N_TRAIN, 3, 32, 32)
        assert (tmp_path / "cache" / "pbc" / "cifar10" / "cifar-10-batches-py").is_dir()
    else:
        with pytest.raises(DataError, match="unsafe"):
            load_dataset("cifar10", download=True)
        assert not list(tmp_path.rglob("escape"))


# ----------------------------------------------------------------------------- real data
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", FASHION_DIR.parent)
    ds = load_dataset("fashion-mnist")
    assert ds.source == str(FASHION_DIR)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [6000] * 10
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
