"""Tests for pbc.codec: relative CSR, canonical Huffman, the .pbcz layout and its parser."""

from __future__ import annotations

import hashlib
import struct
import time

import numpy as np
import pytest
from conftest import peak_memory

from pbc.compression.codec import (
    FORMAT_VERSION,
    CodecError,
    PackedLayer,
    canonical_codes,
    decode,
    dense_from_relative_csr,
    dense_weights,
    encode,
    header_bytes,
    huffman_code_lengths,
    huffman_decode,
    huffman_encode,
    read_pbcz,
    relative_csr,
    size_report,
    write_pbcz,
)

META = {"arch": "x"}


def tiny_layer() -> PackedLayer:
    """A 3x4 fc layer with K = 3, index_bits = 2 (max gap 3), worked out by hand below."""
    codes = np.array([[0, 2, 0, 0], [0, 0, 1, 1], [0, 2, 0, 1]])
    return PackedLayer("fc", (3, 4), codes, np.array([0.0, -0.5, 0.25], np.float32),
                       np.array([1.0, 2.0, 3.0], np.float32), index_bits=2)


def random_layer(rng, name, shape, k, index_bits, density=0.1) -> PackedLayer:
    codes = np.where(rng.random(shape) < density, rng.integers(1, k, shape), 0)
    codebook = np.concatenate([[0.0], rng.standard_normal(k - 1)]).astype(np.float32)
    return PackedLayer(name, shape, codes, codebook,
                       rng.standard_normal(shape[0]).astype(np.float32), index_bits)


def assert_same(a: PackedLayer, b: PackedLayer) -> None:
    assert a.name == b.name and tuple(a.shape) == b.shape and a.index_bits == b.index_bits
    assert np.array_equal(np.asarray(a.codes), b.codes)
    assert a.codebook.tobytes() == b.codebook.tobytes()  # bit for bit
    assert a.bias.tobytes() == b.bias.tobytes()


# ----------------------------------------------------------------------------- relative CSR
def test_relative_csr_hand_example():
    # index_bits = 3: gaps 0..7.  Flattened row, positions 0..14:
    #   [0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    # pos 2 (code 3): 2 zeros skipped            -> (2, 3)
    # pos 12 (code 1): 9 zeros skipped (3..11) > 7 -> filler (7, 0) covers 3..9 plus the
    #   explicit zero at 10; then 1 zero (11)     -> (1, 1)
    # trailing zeros at 13, 14: no entries.
    flat = np.array([0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0])
    gaps, values = relative_csr(flat, 3)
    assert gaps.tolist() == [2, 7, 1] and values.tolist() == [3, 0, 1]
    assert np.array_equal(dense_from_relative_csr(gaps, values, flat.size, 3), flat)
    # Exactly 8 zeros (= 2**3) need one filler and then gap 0; exactly 7 need none.
    assert relative_csr(np.array([0] * 8 + [5]), 3)[0].tolist() == [7, 0]
    assert relative_csr(np.array([0] * 7 + [5]), 3)[0].tolist() == [7]
    assert relative_csr(np.array([0] * 16 + [5]), 3)[0].tolist() == [7, 7, 0]
    assert relative_csr(np.zeros(10, int), 3)[0].size == 0


@pytest.mark.parametrize("index_bits", [2, 3, 5, 8])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.3, 1.0])
def test_relative_csr_round_trip(index_bits, density):
    rng = np.random.default_rng(index_bits)
    flat = np.where(rng.random(3000) < density, rng.integers(1, 40, 3000), 0)
    gaps, values = relative_csr(flat, index_bits)
    assert gaps.max(initial=0) < 2 ** index_bits
    assert np.count_nonzero(values) == np.count_nonzero(flat)
    assert np.array_equal(dense_from_relative_csr(gaps, values, flat.size, index_bits), flat)


def test_dense_from_relative_csr_rejects_overruns():
    with pytest.raises(CodecError):
        dense_from_relative_csr([3, 3], [1, 1], 7, 2)  # positions 3 and 7 in a length-7 row
    with pytest.raises(CodecError):
        dense_from_relative_csr([4], [1], 10, 2)  # gap 4 > 3


# ----------------------------------------------------------------------------- Huffman
def test_huffman_hand_example():
    # counts a:5, b:2, c:1, d:1 -> merge c+d (2), then b+(cd) (4), then a+(bcd) (9):
    # lengths a=1, b=2, c=d=3; bits 5*1 + 2*2 + 1*3 + 1*3 = 15.
    a, b, c, d = 10, 11, 12, 13
    stream = [a] * 5 + [b] * 2 + [c, d]
    lengths = huffman_code_lengths(stream)
    assert lengths == {a: 1, b: 2, c: 3, d: 3}
    # canonical: sort by (length, symbol), count upwards: a=0, b=10, c=110, d=111
    assert canonical_codes(lengths) == {a: 0b0, b: 0b10, c: 0b110, d: 0b111}
    payload, nbits, _ = huffman_encode(stream)
    # a a a a a b b c d = 0 0 0 0 0 10 10 110 111, padded with one zero bit
    assert nbits == 15 and payload == bytes([0b00000101, 0b01101110])
    assert huffman_decode(payload, nbits, lengths, len(stream)).tolist() == stream


def test_canonical_codes_are_prefix_free():
    rng = np.random.default_rng(1)
    lengths = huffman_code_lengths(rng.zipf(1.5, 5000) % 300)
    codes = canonical_codes(lengths)
    words = sorted(format(codes[s], f"0{n}b") for s, n in lengths.items())
    assert len(set(words)) == len(words)
    assert all(not b.startswith(a) for a, b in zip(words, words[1:], strict=False))
    assert sum(2.0 ** -n for n in lengths.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_huffman_round_trip(seed):
    rng = np.random.default_rng(seed)
    x = rng.geometric(0.2 + 0.2 * seed, size=20000) + 5 * seed
    payload, nbits, lengths = huffman_encode(x)
    assert len(payload) == (nbits + 7) // 8
    assert nbits == sum(lengths[int(s)] for s in x)
    assert np.array_equal(huffman_decode(payload, nbits, lengths, x.size, chunk=997), x)


def test_huffman_single_symbol_and_empty():
    payload, nbits, lengths = huffman_encode([7] * 9)
    assert lengths == {7: 1} and nbits == 9 and payload == b"\x00\x00"
    assert huffman_decode(payload, nbits, lengths, 9).tolist() == [7] * 9
    assert huffman_encode([]) == (b"", 0, {})
    assert huffman_decode(b"", 0, {}, 0).size == 0


def test_huffman_decode_rejects_bad_streams():
    payload, nbits, lengths = huffman_encode([1, 2, 2, 3, 3, 3])
    for args in [(payload, nbits, lengths, 7), (payload, nbits, lengths, 5),
                 (payload + b"\0", nbits, lengths, 6), (payload, nbits - 1, lengths, 6),
                 (b"\x80", 1, {0: 1}, 1),  # bit "1" is not a code of {0: "0"}
                 (b"\x01", 1, {0: 1}, 1),  # nonzero padding
                 (b"\x00", 1, {0: 1, 1: 1, 2: 1}, 1),  # Kraft violated
                 (b"\x00", 1, {}, 1)]:
        with pytest.raises(CodecError):
            huffman_decode(*args)


# ----------------------------------------------------------------------------- size, by hand
def test_tiny_file_size_by_hand():
    # Flattened codes (index_bits 2, max gap 3): 0 2 0 0 | 0 0 1 1 | 0 2 0 1
    #   pos 1 (2): gap 1 -> (1,2); pos 6 (1): 4 zeros -> filler (3,0), then (0,1);
    #   pos 7 (1): (0,1); pos 9 (2): (1,2); pos 11 (1): (1,1).   6 entries, 1 filler.
    # values [2,0,1,1,2,1]: counts 0:1 1:3 2:2 -> merge 0+2, then 1+(02): lengths 1:1 0:2 2:2
    #   canonical 1="0", 0="10", 2="11"; bits "11 10 0 0 11 0" = 9 -> 2 bytes (7 pad bits)
    # gaps [1,3,0,0,1,1]: counts 0:2 1:3 3:1 -> merge 3+0, then 1+(30): lengths 1:1 0:2 3:2
    #   canonical 1="0", 0="10", 3="11"; bits "0 11 10 10 0 0" = 9 -> 2 bytes
    # codebook 3*4 = 12, bias 3*4 = 12, tables (3 + 3) * 3 = 18,
    # section overhead 2+2 (name) + 1+2*4 (shape) + 1 (index_bits) + 4 (K) + 4 (bias len)
    #   + 8 (entries) + 2*(4+8) (table sizes, bit counts) = 54;  section = 100.
    # header 4 + 2 + 4 + len('{"arch":"x"}') = 12 + 4 = 26, checksum 32;  file = 158.
    layer = tiny_layer()
    rep = size_report([layer], META)
    fc = rep["layers"]["fc"]
    assert (fc["values_bits"], fc["index_bits_total"]) == (9, 9)
    assert (fc["values_bytes"], fc["index_bytes"]) == (2, 2)
    assert (fc["codebook_bytes"], fc["bias_bytes"], fc["table_bytes"]) == (12, 12, 18)
    assert fc["section_overhead_bytes"] == 54
    assert (fc["n_entries"], fc["n_fillers"], fc["n_nonzero"]) == (6, 1, 5)
    assert rep["total_bytes"] == 100 and header_bytes(META) == 58 and rep["file_bytes"] == 158
    data = encode([layer], META)
    assert len(data) == 158
    # Spot-check the layout at the offsets the module docstring implies.
    assert data[:4] == b"PBCZ" and data[4:10] == struct.pack("<HI", FORMAT_VERSION, 12)
    assert data[10:22] == b'{"arch":"x"}' and data[22:26] == struct.pack("<I", 1)
    assert data[26:39] == struct.pack("<H", 2) + b"fc" + struct.pack("<B2I", 2, 3, 4)
    assert data[39:44] == struct.pack("<BI", 2, 3)
    assert data[72:84] == struct.pack("<QI", 6, 3)
    assert data[84:93] == bytes([0, 0, 2, 1, 0, 1, 2, 0, 2])  # (u16 symbol, u8 length) x 3
    assert data[93:101] == struct.pack("<Q", 9)
    assert data[122:126] == bytes([0b11100011, 0, 0b01110100, 0])
    assert data[126:] == hashlib.sha256(data[:126]).digest()


def test_size_report_matches_encode_on_random_layers():
    rng = np.random.default_rng(3)
    layers = [random_layer(rng, "conv1", (20, 1, 5, 5), 200, 8),
              random_layer(rng, "fc1", (500, 800), 30, 5, density=0.02),
              random_layer(rng, "fc2", (10, 500), 2, 5, density=0.0)]
    for meta in ({}, {"arch": "lenet5", "note": "ünïcode"}):
        rep = size_report(layers)
        assert len(encode(layers, meta)) == rep["total_bytes"] + header_bytes(meta)
        assert rep["total_bytes"] == sum(p["total_bytes"] for p in rep["layers"].values())


# ----------------------------------------------------------------------------- round trip
def test_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    layers = [random_layer(rng, "conv1", (20, 1, 5, 5), 256, 8),
              random_layer(rng, "conv2", (50, 20, 5, 5), 300, 8, density=0.05),
              random_layer(rng, "fc1", (500, 800), 32, 5, density=0.03)]
    meta = {"arch": "lenet5", "classes": 10, "nested": {"a": [1, 2.5]}}
    path = tmp_path / "out" / "model.pbcz"
    n = write_pbcz(path, layers, meta)
    assert n == path.stat().st_size == size_report(layers, meta)["file_bytes"]
    meta2, layers2 = read_pbcz(path)
    assert meta2 == meta and len(layers2) == 3
    for a, b in zip(layers, layers2, strict=True):
        assert_same(a, b)
        assert np.array_equal(dense_weights(b), a.codebook[a.codes])
        assert dense_weights(b).dtype == np.float32
    assert layers2[0].codes.dtype == np.uint8 and layers2[1].codes.dtype == np.uint16
    assert not list(path.parent.glob(".*tmp"))


def test_encode_rejects_bad_layers():
    layer = tiny_layer()
    bad = [dict(codes=layer.codes + 1), dict(codebook=np.array([1.0, 2.0], np.float32)),
           dict(codebook=np.array([0.0, 0.1])),  # 0.1 is not a float32
           dict(index_bits=0), dict(index_bits=17), dict(shape=(4, 3)), dict(name="")]
    for change in bad:
        with pytest.raises(ValueError):
            encode([PackedLayer(**{**layer.__dict__, **change})], {})
    with pytest.raises(ValueError):
        encode([layer, layer], {})


def test_read_pbcz_missing_file(tmp_path):
    with pytest.raises(CodecError, match="nope.pbcz"):
        read_pbcz(tmp_path / "nope.pbcz")


# ----------------------------------------------------------------------------- defensive
def two_layer_file() -> bytes:
    rng = np.random.default_rng(5)
    return encode([tiny_layer(), random_layer(rng, "conv", (4, 2, 3, 3), 9, 8, 0.3)], META)


def test_every_truncation_raises_codec_error():
    data = two_layer_file()
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            decode(data[:cut])


def test_random_corruption_raises_only_codec_error():
    data = two_layer_file()
    rng = np.random.default_rng(0)
    for _ in range(2000):
        b = bytearray(data)
        for i in rng.integers(0, len(b), rng.integers(1, 4)):
            b[i] = int(rng.integers(0, 256))
        try:
            decode(bytes(b))
        except CodecError:
            pass


def patched(data: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def test_bad_magic_version_and_trailing_bytes():
    data = encode([tiny_layer()], META)
    with pytest.raises(CodecError, match="magic"):
        decode(b"PBCX" + data[4:])
    with pytest.raises(CodecError, match="version"):
        decode(patched(data, 4, "<H", FORMAT_VERSION + 1))
    with pytest.raises(CodecError, match="trailing"):
        decode(data + b"\0")
    with pytest.raises(CodecError, match="JSON"):
        decode(data[:10] + b"[1,2,3,4,5]!" + data[22:])


# Offsets in the tiny file (see test_tiny_file_size_by_hand).
@pytest.mark.parametrize("offset, fmt, value", [
    (6, "<I", 2 ** 32 - 1),       # metadata length
    (22, "<I", 2 ** 32 - 1),      # layer count
    (26, "<H", 2 ** 16 - 1),      # name length
    (31, "<I", 2 ** 32 - 1),      # shape dim 0
    (40, "<I", 2 ** 32 - 1),      # K
    (56, "<I", 2 ** 32 - 1),      # bias length
    (72, "<Q", 2 ** 40),          # CSR entry count
    (80, "<I", 2 ** 32 - 1),      # value-table size
    (93, "<Q", 2 ** 40),          # value bit count
    (114, "<Q", 2 ** 63),         # index bit count
])
def test_huge_length_fields_raise_without_allocating(offset, fmt, value):
    data = patched(encode([tiny_layer()], META), offset, fmt, value)
    t0 = time.perf_counter()
    with peak_memory() as peak, pytest.raises(CodecError):
        decode(data)
    assert time.perf_counter() - t0 < 1.0 and peak.bytes < 1 << 20


def test_code_not_below_k_is_rejected():
    data = encode([tiny_layer()], META)
    # value table (84..92) holds symbols 0, 1, 2 with K = 3; make the last symbol 3.
    with pytest.raises(CodecError, match="below 3"):
        decode(patched(data, 90, "<H", 3))
    with pytest.raises(CodecError, match="codebook"):
        decode(patched(data, 44, "<f", 1.0))  # codebook[0] must be 0


def test_entry_count_must_match_streams_and_shape():
    data = encode([tiny_layer()], META)
    for n in (5, 7, 13):
        with pytest.raises(CodecError):
            decode(patched(data, 72, "<Q", n))
    with pytest.raises(CodecError):
        decode(patched(data, 35, "<I", 2))  # shape (3, 2): the entries run past 6 elements
