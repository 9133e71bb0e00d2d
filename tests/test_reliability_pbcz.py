"""Reliability of ``.pbcz`` files read back: hand-made hostile headers, damaged bytes, a fuzz
run through ``pbc evaluate``.

A hostile file must end in one line and exit 1, before any large allocation; a damaged one
must never decode to other weights with exit 0 (the checksum); a version-1 file (no
checksum) still reads.  The codec's own parser checks are in test_codec.py.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time

import numpy as np
import pytest
import torch
from conftest import one_line_error, peak_memory

from pbc.cli import main
from pbc.compression import codec
from pbc.compression.export import load_compressed, packed_meta
from pbc.nets import Architecture, LayerSpec


def _evaluate(path, data, capsys) -> tuple[int, str]:
    try:
        code = main(["evaluate", str(path), "--data-dir", str(data)])
    except SystemExit as e:           # argparse's exit: never expected here
        code = e.code
    return code, capsys.readouterr().err


def _reseal(body: bytes) -> bytes:
    """A version-2 file of ``body`` (header and sections) with a valid checksum: what an
    attacker who knows the format can write."""
    return body + hashlib.sha256(body).digest()


def _zero_section(name: str, shape: tuple[int, ...], index_bits: int = 5) -> bytes:
    """A layer section with no entries (every weight zero): the smallest way to declare a
    large layer."""
    nb = name.encode()
    return (struct.pack("<H", len(nb)) + nb
            + struct.pack(f"<B{len(shape)}I", len(shape), *shape)
            + struct.pack("<BI", index_bits, 1) + struct.pack("<f", 0.0)
            + struct.pack("<I", 0) + struct.pack("<Q", 0)
            + struct.pack("<IQ", 0, 0) + struct.pack("<IQ", 0, 0))


def _body(meta: dict, sections: list[bytes], version: int = codec.FORMAT_VERSION) -> bytes:
    mj = json.dumps(meta).encode()
    return (codec.MAGIC + struct.pack("<HI", version, len(mj)) + mj
            + struct.pack("<I", len(sections)) + b"".join(sections))


def _arch(*layers, input_shape=(1, 28, 28)) -> Architecture:
    return Architecture("hostile", input_shape, (LayerSpec("flatten", "flatten"), *layers))


def _layer(name, out_size, in_size, rng) -> codec.PackedLayer:
    codes = rng.integers(0, 4, size=(out_size, in_size))
    return codec.PackedLayer(name, (out_size, in_size), codes,
                             np.array([0, 0.5, -0.25, 1.0], np.float32),
                             np.zeros(out_size, np.float32), 5)


def _write(path, layers, arch, extra=None) -> None:
    extra = {k: torch.as_tensor(v) for k, v in (extra or {}).items()}
    codec.write_pbcz(path, layers, packed_meta(arch, extra, {"run": "test"}))


# ------------------------------------------------------------------------- sizes before memory
@pytest.mark.parametrize("layers", [[(30000, 30000)], [(4096, 4096)] * 16, [(1 << 13,) * 3]],
                         ids=["one-30000x30000", "16-of-4096x4096", "one-8192-cubed"])
def test_huge_declared_layers_are_refused_before_allocation(tmp_path, tiny_data, capsys,
                                                            layers):
    sections = [_zero_section(f"fc{i}", s) for i, s in enumerate(layers)]
    path = tmp_path / "model.pbcz"
    path.write_bytes(_reseal(_body({"format": "pbc-compressed-network"}, sections)))
    assert path.stat().st_size < 4000
    t0 = time.perf_counter()
    with peak_memory() as peak:
        code, err = _evaluate(path, tiny_data, capsys)
    assert code == 1
    one_line_error(err, str(path), "exceeds")
    assert peak.bytes < 64 << 20 and time.perf_counter() - t0 < 5


def test_an_architecture_of_huge_layers_is_refused_before_it_is_built(tmp_path, tiny_data,
                                                                      capsys):
    """The header's architecture is checked too: a small file may not make pbc build a
    network of 10^10 weights."""
    path = tmp_path / "model.pbcz"
    rng = np.random.default_rng(0)
    _write(path, [_layer("fc1", 10, 784, rng)],
           _arch(LayerSpec("linear", "fc1", 784, 10), LayerSpec("linear", "fc2", 100000,
                                                                100000)))
    with peak_memory() as peak:
        code, err = _evaluate(path, tiny_data, capsys)
    assert code == 1
    one_line_error(err, str(path), "fc2")
    assert peak.bytes < 64 << 20


# ------------------------------------------------------------------------- inconsistent headers
def _select_arch(n_in=5):
    return _arch(LayerSpec("select", "sel", 784, n_in), LayerSpec("linear", "fc1", n_in, 10))


@pytest.mark.parametrize("case", ["select-out-of-range", "extra-state-shape", "wrong-input",
                                  "weights-do-not-fit", "nan-codebook", "inf-bias"])
def test_inconsistent_pbcz_is_one_line_exit_1(tmp_path, tiny_data, capsys, case):
    rng = np.random.default_rng(1)
    path = tmp_path / "model.pbcz"
    index = torch.arange(5)
    if case == "select-out-of-range":
        _write(path, [_layer("fc1", 10, 5, rng)], _select_arch(),
               {"sel.index": torch.tensor([0, 1, 2, 3, 10**6])})
    elif case == "extra-state-shape":
        meta = packed_meta(_select_arch(), {"sel.index": index}, {})
        meta["extra_state"]["sel.index"]["shape"] = [7]
        codec.write_pbcz(path, [_layer("fc1", 10, 5, rng)], meta)
    elif case == "wrong-input":           # a CIFAR-shaped network evaluated on Fashion-MNIST
        _write(path, [_layer("fc1", 10, 3072, rng)],
               _arch(LayerSpec("linear", "fc1", 3072, 10), input_shape=(3, 32, 32)))
    elif case == "weights-do-not-fit":    # the packed layer is not the architecture's
        _write(path, [_layer("fc1", 10, 100, rng)], _arch(LayerSpec("linear", "fc1", 784, 10)))
    else:
        _write(path, [_layer("fc1", 10, 784, rng)], _arch(LayerSpec("linear", "fc1", 784, 10)))
        data = bytearray(path.read_bytes()[:-codec.CHECKSUM_BYTES])
        meta_len = struct.unpack_from("<I", data, 6)[0]
        at = 14 + meta_len + 2 + 3 + 1 + 8 + 1 + 4     # the layer's codebook
        if case == "nan-codebook":
            struct.pack_into("<f", data, at + 4, float("nan"))
        else:                                            # K = 4 entries, then the bias length
            struct.pack_into("<f", data, at + 16 + 4, float("inf"))
        path.write_bytes(_reseal(bytes(data)))
    code, err = _evaluate(path, tiny_data, capsys)
    assert code == 1
    one_line_error(err, str(path))


def test_debug_shows_the_error_of_an_inconsistent_pbcz(tmp_path, tiny_data):
    path = tmp_path / "model.pbcz"
    _write(path, [_layer("fc1", 10, 5, np.random.default_rng(1))], _select_arch(),
           {"sel.index": torch.tensor([0, 1, 2, 3, 10**6])})
    from pbc.io import ArtefactError

    with pytest.raises(ArtefactError, match="does not run"):
        main(["--debug", "evaluate", str(path), "--data-dir", str(tiny_data)])


# ------------------------------------------------------------------------------- versions
def test_version_1_files_without_checksum_still_read(tmp_path, tiny_data, capsys):
    rng = np.random.default_rng(2)
    v2 = tmp_path / "v2.pbcz"
    _write(v2, [_layer("fc1", 10, 784, rng)], _arch(LayerSpec("linear", "fc1", 784, 10)))
    body = bytearray(v2.read_bytes()[:-codec.CHECKSUM_BYTES])
    struct.pack_into("<H", body, 4, 1)
    v1 = tmp_path / "v1.pbcz"
    v1.write_bytes(bytes(body))
    a, b = load_compressed(v2), load_compressed(v1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))
    assert _evaluate(v1, tiny_data, capsys)[0] == 0
    future = tmp_path / "v9.pbcz"
    struct.pack_into("<H", body, 4, 9)
    future.write_bytes(bytes(body))
    code, err = _evaluate(future, tiny_data, capsys)
    assert code == 1
    one_line_error(err, str(future), "unsupported .pbcz version 9")


def test_every_one_or_two_byte_flip_is_refused(tmp_path):
    """The issue's probe: one- and two-byte flips used to decode to other weights half of
    the time; with the checksum every flip is refused."""
    rng = np.random.default_rng(3)
    data = codec.encode([_layer("fc1", 10, 30, rng)], {"arch": "x"})
    for _ in range(200):
        b = bytearray(data)
        for i in rng.choice(len(b), size=int(rng.integers(1, 3)), replace=False):
            b[i] ^= int(rng.integers(1, 256))
        with pytest.raises(codec.CodecError):
            codec.decode(bytes(b))


# ----------------------------------------------------------------------------------- fuzz
def _mutations(data: bytes, rng, n: int):
    """``n`` distinct mutations of ``data``: byte changes (half of them in the first 200
    bytes, the header and first section), truncations, insertions, deletions."""
    out, seen = [], {data}
    while len(out) < n:
        b = bytearray(data)
        kind = rng.integers(0, 6)
        if kind <= 2:
            span = 200 if kind == 0 else len(b)
            for i in rng.integers(0, span, int(rng.integers(1, 4))):
                b[i] = int(rng.integers(0, 256))
        elif kind == 3:
            b = b[: int(rng.integers(0, len(b)))]
        elif kind == 4:
            at = int(rng.integers(0, len(b) + 1))
            b[at:at] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        else:
            del b[int(rng.integers(0, len(b)))]
        if bytes(b) not in seen:
            seen.add(bytes(b))
            out.append(bytes(b))
    return out


def _small_network(path) -> None:
    """784 → 16 (a tenth of the weights nonzero) → ReLU → 10, with a select layer and its
    index in the header: every part of the format in about 2 KB."""
    rng = np.random.default_rng(7)
    fc1 = _layer("fc1", 16, 700, rng)
    fc1.codes = np.where(rng.random(fc1.shape) < 0.1, fc1.codes, 0)
    arch = _arch(LayerSpec("select", "sel", 784, 700), LayerSpec("linear", "fc1", 700, 16),
                 LayerSpec("relu", "relu1"), LayerSpec("linear", "fc2", 16, 10))
    _write(path, [fc1, _layer("fc2", 10, 16, rng)], arch,
           {"sel.index": torch.arange(84, 784)})


def test_fuzzed_pbcz_never_crashes_hangs_or_decodes_to_other_weights(tiny_data, tmp_path,
                                                                     capsys):
    source = tmp_path / "source.pbcz"
    _small_network(source)
    assert _evaluate(source, tiny_data, capsys)[0] == 0
    original = source.read_bytes()
    reference = {k: v.clone() for k, v in load_compressed(source).state_dict().items()}
    path = tmp_path / "model.pbcz"
    rng = np.random.default_rng(20240601)
    codes, slowest = {}, 0.0
    for blob in _mutations(original, rng, 300):
        path.write_bytes(blob)
        t0 = time.perf_counter()
        code, err = _evaluate(path, tiny_data, capsys)
        slowest = max(slowest, time.perf_counter() - t0)
        codes[code] = codes.get(code, 0) + 1
        if code == 0:     # allowed only if the weights are exactly the original ones
            state = load_compressed(path).state_dict()
            assert state.keys() == reference.keys()
            assert all(torch.equal(state[k], reference[k]) for k in reference)
        else:
            assert code == 1, err
            one_line_error(err, str(path))
    assert slowest < 5.0
    assert codes == {1: 300}, codes                 # the checksum refuses every one
