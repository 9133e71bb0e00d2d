"""The on-disk packed format ``.pbcz``: CSR with relative indices + Huffman (Han et al. 2015).

Each layer arrives quantised: integer ``codes`` of the weight's shape (row-major), code 0
meaning an exact zero and codes ``1..K-1`` indexing a float32 ``codebook`` with
``codebook[0] == 0``.  The flattened codes become a relative-index CSR stream of
``(gap, code)`` pairs (gap = zeros skipped since the previous entry, at most
``2**index_bits - 1``; a longer run is bridged by a filler entry ``(2**index_bits - 1, 0)``,
an explicit zero).  The value stream and the gap stream are Huffman-coded separately with
canonical codes, bit-packed MSB-first, each padded with zero bits to a whole byte.

File layout (all integers little-endian, fixed width; ``f32`` is IEEE float32 LE)::

    header
      4 B   magic b"PBCZ"
      u16   format version (2)
      u32   M, length of the metadata JSON
      M B   metadata: UTF-8 JSON object (compact separators), at most 1 MiB
      u32   L, number of layer sections (at most 4096)
    layer section, L times
      u16   N, length of the name;   N B  name, UTF-8
      u8    D, number of dimensions (1..8); D x u32  shape (at most 2**28 elements)
      u8    index_bits (1..16)
      u32   K, codebook size (1..65536);   K x f32  codebook (codebook[0] == 0)
      u32   B, bias length;                B x f32  bias
      u64   E, number of CSR entries (pairs); E <= prod(shape)
      u32   Tv, value-table size;  Tv x (u16 symbol, u8 code length), symbols increasing
      u64   Nv, bits in the value payload
      u32   Ti, gap-table size;    Ti x (u16 symbol, u8 code length), symbols increasing
      u64   Ni, bits in the gap payload
      ceil(Nv/8) B  value payload;  ceil(Ni/8) B  gap payload
    checksum
      32 B  SHA-256 of every byte before it (header and layer sections)

So the header and checksum take ``14 + M + 32`` bytes (:func:`header_bytes`) and a section
``44 + N + 4 D`` bytes of fixed fields plus ``4 K + 4 B + 3 (Tv + Ti) + ceil(Nv/8) +
ceil(Ni/8)``; :func:`size_report` counts exactly these parts.  The canonical code of a
table is rebuilt by sorting its symbols by (code length, symbol) and counting upwards
(DEFLATE's rule).  Version 1 files, the same without the checksum, are still read.

:func:`decode` treats its input as untrusted: every length is checked against the bytes
left and against the limits below (at most :data:`MAX_TOTAL_ELEMENTS` weights in all, every
codebook entry and bias finite) before anything is read or allocated, the checksum is
verified, and any defect raises :class:`CodecError`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pbc.io import ArtefactError, atomic_write, parse_json

MAGIC = b"PBCZ"
FORMAT_VERSION = 2
#: versions this reader decodes (1: no checksum)
READABLE_VERSIONS = (1, 2)
CHECKSUM_BYTES = 32
MAX_META_BYTES = 1 << 20
MAX_LAYERS = 4096
MAX_NDIM = 8
#: weights of one layer, and of all layers together (twice VGG-16's 15 million)
MAX_LAYER_ELEMENTS = 1 << 25
MAX_TOTAL_ELEMENTS = 1 << 25
#: the largest file read (a network of MAX_TOTAL_ELEMENTS weights packs into far less)
MAX_FILE_BYTES = 1 << 28
MAX_K = 1 << 16
MAX_INDEX_BITS = 16
MAX_CODE_LEN = 48  # canonical codes are handled as int64 windows
_TABLE_DTYPE = np.dtype([("symbol", "<u2"), ("length", "u1")])
_HEADER_FIXED = 4 + 2 + 4 + 4
_SECTION_FIXED = 2 + 1 + 1 + 4 + 4 + 8 + 2 * (4 + 8)


class CodecError(ValueError):
    """A ``.pbcz`` stream that cannot be decoded: one line saying what is wrong."""


@dataclass
class PackedLayer:
    """One quantised layer: ``codes`` (shape ``shape``) index ``codebook`` (K,); ``bias`` (n,)."""

    name: str
    shape: tuple[int, ...]
    codes: np.ndarray
    codebook: np.ndarray
    bias: np.ndarray
    index_bits: int


def dense_weights(layer: PackedLayer) -> np.ndarray:
    """Return the layer's float32 weights ``codebook[codes]``, of shape ``layer.shape``."""
    codebook = np.asarray(layer.codebook, dtype=np.float32)
    return codebook[np.asarray(layer.codes)].reshape(layer.shape).astype(np.float32)


# --------------------------------------------------------------------------- relative CSR
def relative_csr(flat_codes, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative-index CSR of a flattened code array (Han et al. 2015, §3, Fig. 2).

    Parameters
    ----------
    flat_codes : (n,) non-negative integers, 0 = zero weight.
    index_bits : bits per gap; gaps run from 0 to ``2**index_bits - 1``.

    Returns
    -------
    gaps, values : (E,) int64.  Entry ``k`` sits ``gaps[k]`` zeros after entry ``k-1``
        (after position -1 for ``k = 0``).  A run of ``g`` zeros before a nonzero becomes
        ``g // 2**b`` filler entries ``(2**b - 1, 0)`` and then ``(g % 2**b, code)``.
        Zeros after the last nonzero get no entries.
    """
    flat = np.asarray(flat_codes).reshape(-1)
    _check_index_bits(index_bits, ValueError)
    if flat.size and (not np.issubdtype(flat.dtype, np.integer) or flat.min() < 0):
        raise ValueError("relative_csr: codes must be non-negative integers")
    span = 1 << index_bits  # positions covered by one filler: 2**b - 1 zeros + itself
    pos = np.flatnonzero(flat)
    gaps = np.diff(pos, prepend=-1) - 1
    fillers = gaps // span
    out_gaps = np.full(int(fillers.sum()) + pos.size, span - 1, dtype=np.int64)
    out_vals = np.zeros(out_gaps.size, dtype=np.int64)
    at = np.cumsum(fillers + 1) - 1
    out_gaps[at] = gaps % span
    out_vals[at] = flat[pos]
    return out_gaps, out_vals


def dense_from_relative_csr(gaps, values, length: int, index_bits: int) -> np.ndarray:
    """Invert :func:`relative_csr`: (length,) codes of ``values``' dtype; CodecError if invalid."""
    gaps = np.asarray(gaps).reshape(-1)
    values = np.asarray(values).reshape(-1)
    _check_index_bits(index_bits, CodecError)
    if gaps.size != values.size:
        raise CodecError(f"CSR streams differ in length ({gaps.size} gaps, {values.size} values)")
    if gaps.size and (gaps.min() < 0 or gaps.max() >= 1 << index_bits):
        raise CodecError(f"CSR gap outside 0..{(1 << index_bits) - 1}")
    pos = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if pos.size and pos[-1] >= length:
        raise CodecError(f"CSR entries run past the layer's {length} elements")
    out = np.zeros(length, dtype=values.dtype)
    out[pos] = values
    return out


# --------------------------------------------------------------------------- Huffman
def huffman_code_lengths(symbols) -> dict[int, int]:
    """Huffman code length per distinct symbol of ``symbols`` (a 1-D integer sequence).

    Ties are broken deterministically: among equal counts a leaf ranks by its symbol and
    precedes any internal node; internal nodes rank by creation order.  A stream with one
    distinct symbol gets length 1; an empty stream gets ``{}``.
    """
    syms, counts = np.unique(np.asarray(symbols, dtype=np.int64).reshape(-1), return_counts=True)
    if syms.size <= 1:
        return {int(s): 1 for s in syms}
    heap = [(int(c), i) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    parent: list[int] = [-1] * syms.size
    while len(heap) > 1:
        (c1, a), (c2, b) = heapq.heappop(heap), heapq.heappop(heap)
        parent.append(-1)
        parent[a] = parent[b] = len(parent) - 1
        heapq.heappush(heap, (c1 + c2, len(parent) - 1))
    depth = [0] * len(parent)
    for node in range(len(parent) - 2, -1, -1):  # parents are created after their children
        depth[node] = depth[parent[node]] + 1
    if max(depth) > MAX_CODE_LEN:
        raise ValueError(f"Huffman code longer than {MAX_CODE_LEN} bits")
    return {int(s): depth[i] for i, s in enumerate(syms)}


def canonical_codes(lengths: dict[int, int]) -> dict[int, int]:
    """Canonical code (an int read MSB-first over ``lengths[s]`` bits) for each symbol."""
    codes, code, prev = {}, 0, 0
    for s, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= n - prev
        codes[s], code, prev = code, code + 1, n
    return codes


def huffman_encode(symbols) -> tuple[bytes, int, dict[int, int]]:
    """Huffman-code ``symbols``; return ``(payload, nbits, lengths)``, payload MSB-first."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    lengths = huffman_code_lengths(symbols)
    if not lengths:
        return b"", 0, {}
    keys = np.array(sorted(lengths), dtype=np.int64)
    codes = canonical_codes(lengths)
    at = np.searchsorted(keys, symbols)
    lens = np.array([lengths[int(k)] for k in keys], dtype=np.int64)[at]
    vals = np.array([codes[int(k)] for k in keys], dtype=np.int64)[at]
    starts = np.cumsum(lens) - lens
    nbits = int(lens.sum())
    bits = np.zeros(nbits, dtype=np.uint8)
    for j in range(int(lens.max())):
        m = lens > j
        bits[starts[m] + j] = (vals[m] >> (lens[m] - 1 - j)) & 1
    return np.packbits(bits).tobytes(), nbits, lengths


def huffman_decode(payload: bytes, nbits: int, lengths: dict[int, int], count: int,
                   chunk: int = 1 << 16) -> np.ndarray:
    """Decode ``count`` symbols from ``payload`` (``nbits`` bits used); (count,) int64.

    Windows of ``max(lengths)`` bits are read at every bit position of a chunk at once; a
    code's length is found by ``searchsorted`` against the left-justified canonical limits,
    and the decoder then hops from code to code.  Raises CodecError when the payload does
    not hold exactly ``count`` codes in exactly ``nbits`` bits with zero padding.
    """
    _check_lengths(lengths)
    if len(payload) != (nbits + 7) // 8:
        raise CodecError(f"payload has {len(payload)} bytes for {nbits} bits")
    if count > nbits or (count == 0) != (nbits == 0):
        raise CodecError(f"{count} symbols cannot fill {nbits} bits")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if not lengths:
        raise CodecError(f"{count} symbols but an empty Huffman table")
    top = max(lengths.values())
    order = sorted(lengths.items(), key=lambda kv: (kv[1], kv[0]))
    syms = np.array([s for s, _ in order], dtype=np.int64)
    n_at = np.bincount([n for _, n in order], minlength=top + 1)[1:]
    first = np.zeros(top, dtype=np.int64)  # canonical first code of each length 1..top
    for n in range(1, top):
        first[n] = (first[n - 1] + n_at[n - 1]) << 1
    offset = np.cumsum(n_at) - n_at
    limit = (first + n_at) << (top - np.arange(1, top + 1))
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))   # uint8: 8 bytes per byte
    if bits[nbits:].any():
        raise CodecError("nonzero padding bits after the last code")
    bits = np.concatenate([bits[:nbits], np.zeros(top, dtype=np.uint8)])
    out: list[int] = []
    pos = 0
    for start in range(0, nbits, chunk):
        stop = min(start + chunk, nbits)
        if pos >= stop:
            continue
        win = np.zeros(stop - start, dtype=np.int64)
        for j in range(top):
            win = (win << 1) | bits[start + j: stop + j]
        li = np.searchsorted(limit, win, side="right")  # code length - 1; top = no code
        ok = li < top
        lic = np.minimum(li, top - 1)
        sym = np.where(ok, syms[np.clip(offset[lic] + (win >> (top - 1 - lic)) - first[lic],
                                        0, syms.size - 1)], -1)
        step = np.where(ok, li + 1, 0)
        starts = _code_starts(step, pos - start)   # code starts in this chunk, in order
        starts = starts[: count - len(out)]
        bad = step[starts] == 0
        if bad.any() or (starts.size and start + starts[-1] + step[starts[-1]] > nbits):
            at = start + int(starts[np.argmax(bad)] if bad.any() else starts[-1])
            raise CodecError(f"invalid Huffman code at bit {at}")
        out.extend(sym[starts].tolist())
        if starts.size:
            pos = start + int(starts[-1] + step[starts[-1]])
        if len(out) == count:
            break
    if len(out) != count or pos != nbits:
        raise CodecError(f"Huffman stream holds {len(out)} codes in {pos} of {nbits} bits, "
                         f"expected {count}")
    return np.array(out, dtype=np.int64)


def _code_starts(step: np.ndarray, first: int) -> np.ndarray:
    """Positions ``first, first + step[first], …`` that lie inside ``step`` (sorted).

    The hops from code to code are found by pointer doubling — ``jump_{k+1} =
    jump_k ∘ jump_k`` marks, after ``⌈log2 n⌉`` vectorised rounds, every position reachable
    from ``first`` — instead of a Python loop over the codes.  A zero step (no valid code)
    ends the chain there; the caller reports it.
    """
    n = step.size
    if first >= n:
        return np.zeros(0, dtype=np.int64)
    idx = np.arange(n, dtype=np.int64)
    # jump[p]: the next code's start; n is a sink outside the chunk; a dead end stays put
    jump = np.where(step > 0, np.minimum(idx + step, n), idx)
    jump = np.append(jump, n)
    reached = np.zeros(n + 1, dtype=bool)
    reached[first] = True
    hop = 1
    while hop < n + 1:
        reached[jump[reached]] = True
        jump = jump[jump]
        hop <<= 1
    reached[jump[reached]] = True
    return np.flatnonzero(reached[:n])


# --------------------------------------------------------------------------- file format
def header_bytes(meta: dict) -> int:
    """Bytes outside the layer sections that :func:`encode` writes for ``meta``: the header
    and the checksum."""
    return _HEADER_FIXED + len(_meta_json(meta)) + CHECKSUM_BYTES


def size_report(layers: list[PackedLayer], meta: dict | None = None) -> dict:
    """Exact byte counts of each part that :func:`encode` writes, per layer and in total.

    Returns ``{"layers": {name: parts}, "total": parts, "total_bytes": int}`` where ``parts``
    holds ``values_bits``, ``index_bits_total``, ``values_bytes``, ``index_bytes``,
    ``codebook_bytes``, ``bias_bytes``, ``table_bytes``, ``section_overhead_bytes``,
    ``total_bytes`` (their byte sum) and counts ``n_weights``, ``n_nonzero``, ``n_entries``,
    ``n_fillers``.  ``total_bytes`` excludes the header and checksum; with ``meta`` the
    report adds
    ``header_bytes`` and ``file_bytes`` (= ``len(encode(layers, meta))``).
    """
    per = {}
    for layer in _check_layers(layers):
        per[layer.name] = _streams(layer)[0]
    total = {k: sum(p[k] for p in per.values()) for k in _PART_KEYS}
    report = {"layers": per, "total": total, "total_bytes": total["total_bytes"]}
    if meta is not None:
        report["header_bytes"] = header_bytes(meta)
        report["file_bytes"] = report["header_bytes"] + report["total_bytes"]
    return report


def encode(layers: list[PackedLayer], meta: dict) -> bytes:
    """Pack ``layers`` and the JSON-able ``meta`` into ``.pbcz`` bytes (layout: module doc)."""
    layers = _check_layers(layers)
    meta_json = _meta_json(meta)
    parts = [MAGIC, struct.pack("<HI", FORMAT_VERSION, len(meta_json)), meta_json,
             struct.pack("<I", len(layers))]
    for layer in layers:
        _, (vpay, vbits, vlen), (ipay, ibits, ilen), n_entries = _streams(layer)
        name = layer.name.encode("utf-8")
        parts += [struct.pack("<H", len(name)), name,
                  struct.pack(f"<B{len(layer.shape)}I", len(layer.shape), *layer.shape),
                  struct.pack("<BI", layer.index_bits, layer.codebook.size),
                  layer.codebook.astype("<f4").tobytes(),
                  struct.pack("<I", layer.bias.size), layer.bias.astype("<f4").tobytes(),
                  struct.pack("<Q", n_entries),
                  *_table(vlen), struct.pack("<Q", vbits),
                  *_table(ilen), struct.pack("<Q", ibits), vpay, ipay]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def decode(data: bytes) -> tuple[dict, list[PackedLayer]]:
    """Unpack ``.pbcz`` bytes into ``(meta, layers)``; raise CodecError on any defect.

    Decoded ``codes`` are uint8 when K <= 256, else uint16.
    """
    data = bytes(data)
    head = _Reader(data)
    if head.take(4, "magic") != MAGIC:
        raise CodecError("not a .pbcz file (bad magic)")
    (version,) = head.unpack("<H", "header")
    if version not in READABLE_VERSIONS:
        raise CodecError(f"unsupported .pbcz version {version} (this reader: "
                         f"{', '.join(map(str, READABLE_VERSIONS))})")
    if version == 1:
        return _decode_body(data)
    body, digest = data[:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
    intact = len(data) >= 4 + 2 + CHECKSUM_BYTES and hashlib.sha256(body).digest() == digest
    try:
        out = _decode_body(body)
    except CodecError as e:
        if intact:
            raise
        raise CodecError(f"damaged file: checksum mismatch ({e})") from None
    if not intact:
        raise CodecError("damaged file: checksum mismatch (the file was altered after it "
                         "was written)")
    return out


def _decode_body(data: bytes) -> tuple[dict, list[PackedLayer]]:
    """Header and layer sections (no checksum) into ``(meta, layers)``."""
    r = _Reader(data)
    r.take(6, "magic and version")
    (meta_len,) = r.unpack("<I", "header")
    if meta_len > MAX_META_BYTES:
        raise CodecError(f"metadata of {meta_len} bytes exceeds {MAX_META_BYTES}")
    try:
        meta = parse_json(r.take(meta_len, "metadata"), "metadata")
    except ArtefactError as e:
        raise CodecError(str(e)) from None
    if not isinstance(meta, dict):
        raise CodecError("metadata is not a JSON object")
    (n_layers,) = r.unpack("<I", "layer count")
    if n_layers > MAX_LAYERS:
        raise CodecError(f"{n_layers} layers exceeds {MAX_LAYERS}")
    layers, budget = [], [MAX_TOTAL_ELEMENTS]
    for i in range(n_layers):
        layers.append(_read_layer(r, i, budget))
    if len({layer.name for layer in layers}) != len(layers):
        raise CodecError("duplicate layer names")
    if r.left:
        raise CodecError(f"{r.left} trailing bytes after the last layer")
    return meta, layers


def write_pbcz(path, layers: list[PackedLayer], meta: dict) -> int:
    """Write ``encode(layers, meta)`` to ``path`` atomically; return the bytes written."""
    data = encode(layers, meta)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return len(data)


def read_pbcz(path) -> tuple[dict, list[PackedLayer]]:
    """Read and :func:`decode` a ``.pbcz`` file; errors are CodecErrors naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise CodecError(f"{path}: {path.stat().st_size} bytes, more than the "
                             f"{MAX_FILE_BYTES} a .pbcz file may have")
        data = path.read_bytes()
    except OSError as e:
        raise CodecError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    try:
        return decode(data)
    except CodecError as e:
        raise CodecError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- internals
_PART_KEYS = ("values_bits", "index_bits_total", "values_bytes", "index_bytes",
              "codebook_bytes", "bias_bytes", "table_bytes", "section_overhead_bytes",
              "total_bytes", "n_weights", "n_nonzero", "n_entries", "n_fillers")


def _streams(layer: PackedLayer):
    """CSR + Huffman of one checked layer: (size parts, value stream, gap stream, E)."""
    flat = layer.codes.reshape(-1)
    gaps, values = relative_csr(flat, layer.index_bits)
    vs, is_ = huffman_encode(values), huffman_encode(gaps)
    parts = {"values_bits": vs[1], "index_bits_total": is_[1],
             "values_bytes": len(vs[0]), "index_bytes": len(is_[0]),
             "codebook_bytes": 4 * layer.codebook.size, "bias_bytes": 4 * layer.bias.size,
             "table_bytes": _TABLE_DTYPE.itemsize * (len(vs[2]) + len(is_[2])),
             "section_overhead_bytes": _SECTION_FIXED + len(layer.name.encode("utf-8"))
             + 4 * len(layer.shape)}
    parts["total_bytes"] = sum(v for k, v in parts.items() if k.endswith("_bytes"))
    nnz = int(np.count_nonzero(flat))
    parts.update(n_weights=int(flat.size), n_nonzero=nnz, n_entries=int(gaps.size),
                 n_fillers=int(gaps.size) - nnz)
    return parts, vs, is_, int(gaps.size)


def _table(lengths: dict[int, int]) -> list[bytes]:
    arr = np.array(sorted(lengths.items()), dtype=np.int64).reshape(-1, 2)
    rec = np.empty(len(arr), dtype=_TABLE_DTYPE)
    rec["symbol"], rec["length"] = arr[:, 0], arr[:, 1]
    return [struct.pack("<I", len(rec)), rec.tobytes()]


def _meta_json(meta: dict) -> bytes:
    if not isinstance(meta, dict):
        raise ValueError("meta must be a dict")
    out = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(out) > MAX_META_BYTES:
        raise ValueError(f"metadata of {len(out)} bytes exceeds {MAX_META_BYTES}")
    return out


def _check_index_bits(index_bits, error) -> None:
    if not isinstance(index_bits, int | np.integer) or not 1 <= index_bits <= MAX_INDEX_BITS:
        raise error(f"index_bits must be an integer in 1..{MAX_INDEX_BITS}, got {index_bits}")


def _float32(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{what} must be a 1-D float array")
    out = a.astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{what} holds non-finite values")
    if not np.array_equal(out, a):
        raise ValueError(f"{what} is not exactly representable in float32")
    return out


def _check_layers(layers: list[PackedLayer]) -> list[PackedLayer]:
    """Validate layers for encoding; return copies with normalised shapes and arrays."""
    if len(layers) > MAX_LAYERS:
        raise ValueError(f"{len(layers)} layers exceeds {MAX_LAYERS}")
    total = sum(math.prod(int(d) for d in layer.shape) for layer in layers)
    if total > MAX_TOTAL_ELEMENTS:
        raise ValueError(f"{total} weights in all exceeds {MAX_TOTAL_ELEMENTS}")
    out, names = [], set()
    for layer in layers:
        name, shape = layer.name, tuple(int(d) for d in layer.shape)
        if not isinstance(name, str) or not 0 < len(name.encode("utf-8")) < 1 << 16:
            raise ValueError(f"layer name {name!r} must be a non-empty string")
        if name in names:
            raise ValueError(f"duplicate layer name {name!r}")
        names.add(name)
        if (not 1 <= len(shape) <= MAX_NDIM or min(shape) < 0 or max(shape) >= 1 << 32
                or math.prod(shape) > MAX_LAYER_ELEMENTS):
            raise ValueError(f"{name}: bad shape {shape} (at most {MAX_LAYER_ELEMENTS} elements)")
        _check_index_bits(layer.index_bits, ValueError)
        codebook, bias = _float32(layer.codebook, "codebook"), _float32(layer.bias, "bias")
        codes = np.asarray(layer.codes)
        if not 1 <= codebook.size <= MAX_K or codebook[0] != 0:
            raise ValueError(f"{name}: codebook needs 1..{MAX_K} entries and codebook[0] == 0")
        if codes.shape != shape or not (codes.size == 0 or np.issubdtype(codes.dtype, np.integer)):
            raise ValueError(f"{name}: codes must be integers of shape {shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= codebook.size):
            raise ValueError(f"{name}: codes must lie in 0..{codebook.size - 1}")
        out.append(PackedLayer(name, shape, codes.astype(np.int64), codebook, bias,
                               int(layer.index_bits)))
    return out


def _check_lengths(lengths: dict[int, int]) -> None:
    """Code lengths in 1..MAX_CODE_LEN satisfying Kraft's inequality (a valid prefix code)."""
    if any(not 1 <= n <= MAX_CODE_LEN for n in lengths.values()):
        raise CodecError(f"Huffman code length outside 1..{MAX_CODE_LEN}")
    if sum(1 << (MAX_CODE_LEN - n) for n in lengths.values()) > 1 << MAX_CODE_LEN:
        raise CodecError("Huffman code lengths violate Kraft's inequality")


class _Reader:
    """Bounds-checked little-endian reads from a bytes buffer."""

    def __init__(self, data: bytes):
        self.data, self.at = memoryview(bytes(data)), 0

    @property
    def left(self) -> int:
        return len(self.data) - self.at

    def take(self, n: int, what: str) -> bytes:
        if n > self.left:
            raise CodecError(f"truncated: {what} needs {n} bytes, {self.left} left")
        self.at += n
        return bytes(self.data[self.at - n: self.at])

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def array(self, dtype, count: int, what: str) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(self.take(count * dtype.itemsize, what), dtype=dtype).copy()

    def table(self, alphabet: int, what: str) -> dict[int, int]:
        (n,) = self.unpack("<I", what)
        if n > alphabet:
            raise CodecError(f"{what} has {n} entries for an alphabet of {alphabet}")
        rec = self.array(_TABLE_DTYPE, n, what)
        syms = rec["symbol"].astype(np.int64)
        if n and (np.any(np.diff(syms) <= 0) or syms[-1] >= alphabet):
            raise CodecError(f"{what}: symbols not increasing or not below {alphabet}")
        lengths = dict(zip(syms.tolist(), rec["length"].tolist(), strict=True))
        _check_lengths(lengths)
        return lengths


def _read_layer(r: _Reader, i: int, budget: list[int]) -> PackedLayer:
    """One layer section; ``budget[0]``: weights the file may still declare (decremented)."""
    (name_len,) = r.unpack("<H", f"layer {i} name length")
    try:
        name = r.take(name_len, f"layer {i} name").decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError(f"layer {i}: name is not UTF-8") from None
    (ndim,) = r.unpack("<B", f"{name}: ndim")
    if not 1 <= ndim <= MAX_NDIM:
        raise CodecError(f"{name}: {ndim} dimensions (allowed 1..{MAX_NDIM})")
    shape = r.unpack(f"<{ndim}I", f"{name}: shape")
    length = math.prod(shape)
    if length > MAX_LAYER_ELEMENTS:
        raise CodecError(f"{name}: shape {shape} exceeds {MAX_LAYER_ELEMENTS} elements")
    if length > budget[0]:
        raise CodecError(f"{name}: shape {shape} exceeds the {MAX_TOTAL_ELEMENTS} weights a "
                         f"file may hold in all")
    budget[0] -= length
    index_bits, k = r.unpack("<BI", f"{name}: index_bits, K")
    _check_index_bits(index_bits, CodecError)
    if not 1 <= k <= MAX_K:
        raise CodecError(f"{name}: codebook size {k} outside 1..{MAX_K}")
    codebook = r.array("<f4", k, f"{name}: codebook").astype(np.float32)
    if codebook[0] != 0:
        raise CodecError(f"{name}: codebook[0] is {codebook[0]}, not 0")
    if not np.isfinite(codebook).all():
        raise CodecError(f"{name}: codebook holds non-finite values")
    (n_bias,) = r.unpack("<I", f"{name}: bias length")
    bias = r.array("<f4", n_bias, f"{name}: bias").astype(np.float32)
    if not np.isfinite(bias).all():
        raise CodecError(f"{name}: bias holds non-finite values")
    (n_entries,) = r.unpack("<Q", f"{name}: entry count")
    if n_entries > length or n_entries > 8 * r.left:
        raise CodecError(f"{name}: {n_entries} CSR entries for {length} elements")
    vlen = r.table(k, f"{name}: value table")
    (vbits,) = r.unpack("<Q", f"{name}: value bits")
    ilen = r.table(1 << index_bits, f"{name}: index table")
    (ibits,) = r.unpack("<Q", f"{name}: index bits")
    if vbits > 8 * r.left or ibits > 8 * r.left:
        raise CodecError(f"{name}: truncated: payloads of {vbits} + {ibits} bits, "
                         f"{r.left} bytes left")
    values = huffman_decode(r.take((vbits + 7) // 8, f"{name}: value payload"), vbits, vlen,
                            n_entries)
    gaps = huffman_decode(r.take((ibits + 7) // 8, f"{name}: index payload"), ibits, ilen,
                          n_entries)
    dtype = np.uint8 if k <= 256 else np.uint16
    codes = dense_from_relative_csr(gaps, values.astype(dtype), length, index_bits)
    return PackedLayer(name, tuple(shape), codes.reshape(shape), codebook, bias, index_bits)
