"""The ``compress`` stage: posterior → pruned, quantised plain networks and a packed file.

Reads a trained run (``checkpoint.pt``; for the Bayesian methods also the analyse stage's
``analysis.json`` thresholds).  Each method supplies a :class:`CompressionPlan` — BC-GNJ,
BC-GHS and Sparse VD from their posterior (:func:`posterior_plan`), Deep Compression and
soft weight-sharing from their own modules — and one shared path writes

* ``pruned.pt`` — the structured export: pruned units and channels physically removed
  (a ``select`` layer picks single kept inputs of a linear layer), holding ``E[w]``
  (DESIGN §5.1–5.2, the network of the paper's Table 1); single pruned weights of the
  unstructured methods are zeros in it;
* ``quantised.pt`` — the same, quantised: fixed point with step ``2^−t`` at each layer's
  posterior bit precision (``t`` significand bits, §5.3) for the Bayesian methods, the
  method's codebook for DC (k-means) and SWS (mixture means);
* ``model.pbcz`` — the quantised net packed as relative-index CSR (5-bit indices for linear
  layers, 8-bit for convolutions) with Huffman-coded value and index streams (§5.4);
* ``compression.json`` — per-layer sizes and bits, errors, rates, byte counts.

Size conventions (all rates have the weights of the original 32-bit network as numerator,
biases excluded from both sides, as in the paper):

* ``nonzero_fraction`` = |w ≠ 0| / |w| and ``pruning`` = |w| / |w ≠ 0|, counting the nonzero
  weights of the pruned export (for the structured methods these are the kept weights);
* ``fast_prediction`` = 32·|w| / Σ_l |w kept|_l · bits_l  (the dense pruned layers, which for
  the unstructured methods keep every unit that still has a weight; bits = 1 + e + t for the
  fixed-point methods, the codebook index bits for DC and SWS);
* ``max_compression`` = 32·|w| / 8·Σ_l (Huffman value bytes + Huffman index bytes +
  4·codebook entries) — the weights' share of the packed file.
* ``file_bytes`` is the whole packed file; ``accounted_bytes`` = header + Σ per-layer parts
  (weights, index, codebook, float32 biases, Huffman tables, section fields) equals it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pbc import codec
from pbc.architectures import Architecture, LayerSpec, build_network
from pbc.data import load_dataset
from pbc.export import load_packed, packed_meta, save_export
from pbc.infer import classification_error
from pbc.io import StageError, read_json, write_json
from pbc.posterior import (
    bit_precision,
    kept_weight_mask,
    layer_moments,
    structured_masks,
    weight_masks,
)
from pbc.train import load_run, posterior_mean_network

INDEX_BITS = {"linear": 5, "conv": 8}     # relative-index bits of the CSR streams
KMEANS_BITS = {"linear": 5, "conv": 8}    # Deep Compression's codebook sizes (2^bits)
PRUNED, QUANTISED, PACKED, COMPRESSION = "pruned.pt", "quantised.pt", "model.pbcz", \
    "compression.json"


class MissingStage(StageError):
    """A stage's input artefact is absent (e.g. ``compress`` before ``analyse``)."""


@dataclass
class Structured:
    """A structurally pruned network: its architecture and plain state dict."""

    arch: Architecture
    state: dict[str, torch.Tensor]
    weighted: list[str]          # names of the weighted layers, in order


def structured_export(arch: Architecture, state: dict[str, torch.Tensor],
                      masks: dict[str, tuple[np.ndarray, np.ndarray]]) -> Structured:
    """Remove pruned units/channels from ``state`` (a ``build_network(arch)`` state dict).

    ``masks[name] = (in_mask, out_mask)`` as from :func:`pbc.posterior.propagate_masks`.
    """
    specs, out, weighted = [], {}, []
    alive = None                      # mask of the units the previous layers still produce
    prev_out = None                   # out-size of the previous weighted layer
    for s in arch.layers:
        if s.kind in ("linear", "conv"):
            in_m, out_m = masks[s.name]
            if alive is None:
                avail = np.ones(s.in_size, bool)
            else:
                avail = np.repeat(alive, s.in_size // prev_out)
            if np.any(in_m & ~avail):
                raise ValueError(f"{s.name}: input mask keeps units the previous layer removed")
            in_t, out_t = torch.from_numpy(in_m), torch.from_numpy(out_m)
            if s.kind == "linear" and not in_m[avail].all():
                index = torch.from_numpy(np.flatnonzero(in_m[avail]))
                sel = f"{s.name}_select"
                specs.append(LayerSpec("select", sel, int(avail.sum()), int(index.numel())))
                out[f"{sel}.index"] = index
            w = state[f"{s.name}.weight"][out_t][:, in_t]
            out[f"{s.name}.weight"] = w.contiguous()
            out[f"{s.name}.bias"] = state[f"{s.name}.bias"][out_t].contiguous()
            specs.append(LayerSpec(s.kind, s.name, int(in_m.sum()), int(out_m.sum()),
                                   s.kernel, s.padding))
            weighted.append(s.name)
            alive, prev_out = out_m, s.out_size
        elif s.kind == "batchnorm":
            keep = torch.from_numpy(alive)
            for key in ("weight", "bias", "running_mean", "running_var"):
                out[f"{s.name}.{key}"] = state[f"{s.name}.{key}"][keep].clone()
            out[f"{s.name}.num_batches_tracked"] = state[f"{s.name}.num_batches_tracked"]
            specs.append(LayerSpec("batchnorm", s.name, int(alive.sum()), int(alive.sum())))
        else:
            specs.append(s)
    return Structured(Architecture(arch.name + "-pruned", arch.input_shape, tuple(specs)),
                      out, weighted)


def fixed_point_codes(w: np.ndarray, t: int,
                      max_codes: int = codec.MAX_K) -> tuple[np.ndarray, np.ndarray, int]:
    """Round ``w`` to multiples of ``δ = 2^−t``; return ``(codes, codebook, t)``.

    ``codebook[0] = 0`` and ``codebook[codes] == round(w/δ)·δ`` exactly (float32).  When a
    near-deterministic posterior asks for so many bits that the codebook would exceed
    ``max_codes`` entries (the packed format's limit), ``t`` is lowered until it fits; the
    returned ``t`` is the one used.
    """
    w64 = w.astype(np.float64)
    while True:
        step = 2.0 ** -t
        q = (np.floor(w64 / step + 0.5) * step).astype(np.float32)
        values = np.unique(q[q != 0])
        if values.size < max_codes or t <= 1:
            break
        t -= 1
    codebook = np.concatenate([[0.0], values]).astype(np.float32)
    codes = np.zeros(q.shape, np.int64)
    nz = q != 0
    codes[nz] = np.searchsorted(values, q[nz]) + 1
    return codes, codebook, t


def kmeans_1d(x: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars, linear initialisation between ``min`` and ``max`` (Deep
    Compression's choice); returns ``(centroids ascending, labels)``.

    In one dimension the clusters are runs of the sorted values, cut at the midpoints of
    consecutive centroids: after one sort, an iteration is ``k`` binary searches and prefix
    sums, so VGG-16's 2.4M-weight layers with 256 centroids take well under a second.  An
    empty cluster keeps its centroid.
    """
    x = np.asarray(x, np.float64).ravel()
    xs = np.sort(x)
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    centroids = np.linspace(xs[0], xs[-1], k)
    for _ in range(iters):
        mids = 0.5 * (centroids[1:] + centroids[:-1])
        # a value equal to a midpoint goes to the lower cluster, as in the labels below
        cuts = np.concatenate([[0], np.searchsorted(xs, mids, side="right"), [xs.size]])
        counts = np.diff(cuts)
        sums = np.diff(prefix[cuts])
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(new, centroids):
            break
        centroids = new
    labels = np.searchsorted(0.5 * (centroids[1:] + centroids[:-1]), x)
    return centroids, labels


def kmeans_codes(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer k-means weight sharing: ``2^bits`` centroids (:func:`kmeans_1d`) over the
    nonzero weights; exact zeros keep code 0."""
    flat = w.astype(np.float64).ravel()
    nz = flat != 0
    if nz.sum() == 0:
        return np.zeros(w.shape, np.int64), np.zeros(1, np.float32)
    k = int(min(2**bits, np.unique(flat[nz]).size))
    centroids, labels = kmeans_1d(flat[nz], k)
    codes = np.zeros(flat.shape, np.int64)
    codes[nz] = labels + 1
    codebook = np.concatenate([[0.0], centroids]).astype(np.float32)
    return codes.reshape(w.shape), codebook


def _with_weights(structured: Structured, weights: dict[str, torch.Tensor]) -> dict:
    state = dict(structured.state)
    state.update(weights)
    return state


def _network(arch: Architecture, state: dict) -> torch.nn.Module:
    net = build_network(arch)
    net.load_state_dict(state, strict=True)
    return net.eval()


@dataclass
class Quantised:
    """One layer's quantisation: ``codebook[codes]`` are its weights; ``bits`` the record's
    bit fields (``bits`` = bits per weight of the dense fast-prediction format)."""

    codes: np.ndarray
    codebook: np.ndarray
    bits: dict


@dataclass
class CompressionPlan:
    """What a method hands to the shared export → quantise → pack → account path.

    ``state`` is the trained network's plain state dict (posterior means for the Bayesian
    methods); ``weight_keep`` the unstructured keep masks of the methods that prune single
    weights (applied before the structured export); ``masks`` the structured
    ``(in_mask, out_mask)`` per weighted layer; ``quantise(name, w)`` quantises the pruned
    weights of a layer; ``thresholds`` is recorded per layer (``None`` where none applies).
    """

    state: dict[str, torch.Tensor]
    masks: dict[str, tuple[np.ndarray, np.ndarray]]
    quantise: Callable[[str, np.ndarray], Quantised]
    weight_keep: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: dict[str, float | None] = field(default_factory=dict)


def posterior_plan(run: Path, arch: Architecture, net) -> CompressionPlan:
    """BC-GNJ, BC-GHS and Sparse VD: the analyse stage's thresholds prune groups (or single
    weights), and each layer is rounded to fixed point at its posterior bit precision."""
    if not (run / "analysis.json").is_file():
        raise MissingStage(f"{run}: no analysis.json; run `pbc analyse {run}` first")
    thresholds = read_json(run / "analysis.json")["thresholds"]
    posts = {layer.site: layer_moments(layer) for layer in net.bayes_layers()}
    masks = structured_masks(arch, posts, thresholds)
    w_keep = weight_masks(posts, thresholds)
    full = posterior_mean_network(net, arch).cpu().eval()

    def quantise(name: str, w: np.ndarray) -> Quantised:
        post = posts[name]
        keep = kept_weight_mask(post.kind, post.w_mean.shape, *masks[name])
        if name in w_keep:
            keep = keep & w_keep[name]
        bits = bit_precision(post.w_mean[keep], post.w_var[keep])
        codes, codebook, t_used = fixed_point_codes(w, bits["significand_bits"])
        return Quantised(codes, codebook, {**bits, "codebook_significand_bits": t_used})

    return CompressionPlan(full.state_dict(), masks, quantise, w_keep, dict(thresholds))


def unstructured_plan(arch: Architecture, state: dict[str, torch.Tensor],
                      weight_keep: dict[str, np.ndarray],
                      quantise: Callable[[str, np.ndarray], Quantised]) -> CompressionPlan:
    """The plan of a method that prunes single weights (DC, SWS): the structured masks are
    the units left without a weight (:func:`pbc.posterior.groups_of_weights`, propagated);
    no threshold applies."""
    from pbc.posterior import groups_of_weights, propagate_masks

    groups = {s.name: groups_of_weights(s.kind, weight_keep[s.name],
                                        state[f"{s.name}.bias"].numpy())
              for s in arch.weighted_layers()}
    return CompressionPlan(state, propagate_masks(arch, groups), quantise, weight_keep,
                           dict.fromkeys(groups))


def _method_plan(run: Path, config, arch: Architecture, net) -> CompressionPlan:
    if config.prior == "none":
        raise StageError(f"{run}: a deterministic run (prior 'none') has nothing to compress; "
                         f"train with --prior gnj|ghs|svd|sws|dc")
    if config.prior == "dc":
        from pbc.deep_compression import compression_plan
        return compression_plan(net, arch)
    if config.prior == "sws":
        from pbc.soft_sharing import compression_plan
        return compression_plan(net, arch)
    return posterior_plan(run, arch, net)


def compress(run_dir, kmeans_bits: dict[str, int] | None = None) -> dict:
    """Run the compress stage on a trained run (analysed first where the method has a
    posterior); returns the ``compression.json`` record."""
    run = Path(run_dir)
    config, arch, net, _ = load_run(run)
    plan = _method_plan(run, config, arch, net)
    empty = [n for n, (in_m, out_m) in plan.masks.items() if not in_m.any() or not out_m.any()]
    if empty:
        raise StageError(f"{run}: every unit of {', '.join(empty)} is pruned, so the network "
                         f"is a constant; train with a weaker prior or fewer pruning steps")
    full = _network(arch, plan.state)
    state = dict(plan.state)
    for name, keep in plan.weight_keep.items():
        state[f"{name}.weight"] = state[f"{name}.weight"] * torch.from_numpy(keep)
    structured = structured_export(arch, state, plan.masks)
    specs = {s.name: s for s in arch.weighted_layers()}

    layers, fixed_w, kmeans_w, packed = [], {}, {}, []
    for name in structured.weighted:
        spec, (in_m, out_m) = specs[name], plan.masks[name]
        w = structured.state[f"{name}.weight"].numpy()
        q = plan.quantise(name, w)
        fixed_w[f"{name}.weight"] = torch.from_numpy(q.codebook[q.codes])
        kb = (kmeans_bits or {}).get(name, KMEANS_BITS[spec.kind])
        k_codes, k_book = kmeans_codes(w, kb)
        kmeans_w[f"{name}.weight"] = torch.from_numpy(k_book[k_codes])
        packed.append(codec.PackedLayer(
            name=name, shape=tuple(w.shape), codes=q.codes, codebook=q.codebook,
            bias=structured.state[f"{name}.bias"].numpy().astype(np.float32),
            index_bits=INDEX_BITS[spec.kind]))
        groups = in_m if spec.kind == "linear" else out_m
        layers.append({"name": name, "kind": spec.kind,
                       "groups_total": int(groups.size), "groups_kept": int(groups.sum()),
                       "in_kept": int(in_m.sum()), "out_kept": int(out_m.sum()),
                       "weights_total": int(plan.state[f"{name}.weight"].numel()),
                       "weights_kept": int(w.size), "weights_nonzero": int((w != 0).sum()),
                       "threshold": plan.thresholds.get(name), **q.bits,
                       "codebook_size": int(q.codebook.size),
                       "nonzero_quantised": int((q.codes != 0).sum()),
                       "kmeans_bits": kb})

    pruned_net = _network(structured.arch, structured.state)
    quant_state = _with_weights(structured, fixed_w)
    quant_net = _network(structured.arch, quant_state)
    kmeans_net = _network(structured.arch, _with_weights(structured, kmeans_w))
    save_export(run / PRUNED, structured.arch, structured.state)
    save_export(run / QUANTISED, structured.arch, quant_state)
    extra = {k: v for k, v in structured.state.items()
             if k.rsplit(".", 1)[0] not in structured.weighted}
    meta = packed_meta(structured.arch, extra, {"run": str(run), "prior": config.prior,
                                                "model": config.model, "data": config.data})
    file_bytes = codec.write_pbcz(run / PACKED, packed, meta)
    decoded = load_packed(run / PACKED)

    data = load_dataset(config.data, config.data_dir)
    x, y = data.test_x, data.test_y
    same, max_diff = _compare(quant_net, decoded, x)
    sizes = codec.size_report(packed, meta)
    record = {
        "run": str(run), "prior": config.prior, "model": config.model, "data": config.data,
        "layers": layers,
        "error": {"full": classification_error(full, x, y),
                  "pruned": classification_error(pruned_net, x, y),
                  "quantised": classification_error(quant_net, x, y),
                  "kmeans": classification_error(kmeans_net, x, y),
                  "packed": classification_error(decoded, x, y)},
        "rates": _rates(layers, sizes),
        "packed_bytes": file_bytes, "header_bytes": codec.header_bytes(meta),
        "accounted_bytes": sizes["total_bytes"] + codec.header_bytes(meta),
        "size_parts": sizes["layers"],
        "packed_matches_quantised": {"same_argmax": same, "max_abs_logit_diff": max_diff},
        "conventions": __doc__.split("Size conventions")[1].strip(),
    }
    write_json(run / COMPRESSION, record)
    return record


def _rates(layers: list[dict], sizes: dict) -> dict:
    n_w = sum(r["weights_total"] for r in layers)
    fast_bits = sum(r["weights_kept"] * r["bits"] for r in layers)
    weight_bytes = sum(p["values_bytes"] + p["index_bytes"] + p["codebook_bytes"]
                       for p in sizes["layers"].values())
    n_nonzero = sum(r["weights_nonzero"] for r in layers)
    return {"nonzero_fraction": n_nonzero / n_w, "pruning": n_w / n_nonzero,
            "fast_prediction": 32 * n_w / fast_bits,
            "max_compression": 32 * n_w / (8 * weight_bytes)}


@torch.no_grad()
def _compare(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, batch: int = 2000):
    same, diff = True, 0.0
    for i in range(0, x.shape[0], batch):
        la, lb = a(x[i:i + batch]), b(x[i:i + batch])
        same &= bool(torch.equal(la.argmax(-1), lb.argmax(-1)))
        diff = max(diff, float((la - lb).abs().max()))
    return same, diff
