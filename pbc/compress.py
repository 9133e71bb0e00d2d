"""The ``compress`` stage: posterior → pruned, quantised plain networks and a packed file.

Reads a trained run (``checkpoint.pt``; for the Bayesian methods also the analyse stage's
``analysis.json`` thresholds).  The run's method supplies a
:class:`~pbc.compression.plan.CompressionPlan` (what to prune, how to quantise) and one
shared path writes

* ``pruned.pt`` — the structured export: pruned units and channels physically removed
  (a ``select`` layer picks single kept inputs of a linear layer), holding ``E[w]``
  (the network of the paper's Table 1); single pruned weights of the
  unstructured methods are zeros in it;
* ``quantised.pt`` — the same, quantised: fixed point with step ``2^−t`` at each layer's
  posterior bit precision (``t`` significand bits) for the Bayesian methods, the
  method's codebook for DC (k-means) and SWS (mixture means);
* ``model.pbcz`` — the quantised net packed as relative-index CSR (5-bit indices for linear
  layers, 8-bit for convolutions) with Huffman-coded value and index streams;
* ``compression.json`` — per-layer sizes and bits, errors, rates, byte counts.

Size conventions (all rates have the weights of the original 32-bit network as numerator,
biases excluded from both sides, as in the paper):

* ``nonzero_fraction`` = |w ≠ 0| / |w| and ``pruning`` = |w| / |w ≠ 0|, counting the nonzero
  weights of the pruned export (for the structured methods these are the kept weights);
* ``fast_prediction`` = 32·|w| / Σ_l |w kept|_l · bits_l  (the dense pruned layers, which for
  the unstructured methods keep every unit that still has a weight; for the methods with a
  posterior bit precision t, bits = the narrower of a float (1 + e + t) and a fixed-point
  integer of step 2^−t; the codebook index bits for DC and SWS);
* ``max_compression`` = 32·|w| / 8·Σ_l (Huffman value bytes + Huffman index bytes +
  4·codebook entries) — the weights' share of the packed file.
* ``file_bytes`` is the whole packed file; ``accounted_bytes`` = header and checksum + Σ
  per-layer parts (weights, index, codebook, float32 biases, Huffman tables, section fields)
  equals it.

The four files are written under the run directory's lock and committed together
(:class:`pbc.io.Commit`): a kill leaves the previous set or the new one, never a mix.
``compression.json`` records the SHA-256 of the other three (``sha256``), which the readers
of :mod:`pbc.rundir` check.
"""

from __future__ import annotations

import numpy as np
import torch

from pbc.compression import codec
from pbc.compression.export import load_packed, packed_meta, save_export
from pbc.compression.plan import INDEX_BITS, KMEANS_BITS, Structured, structured_export
from pbc.compression.quantise import kmeans_codes
from pbc.io import Commit, StageError, sha256_file, write_json
from pbc.nets import classification_error, plain_network
from pbc.rundir import (
    COMPRESSION,
    PACKED,
    PRUNED,
    QUANTISED,
    RunDir,
    load_trained,
    run_splits,
)


def _with_weights(structured: Structured, weights: dict[str, torch.Tensor]) -> dict:
    state = dict(structured.state)
    state.update(weights)
    return state


def compress(run_dir, kmeans_bits: dict[str, int] | None = None) -> dict:
    """Run the compress stage on a trained run (analysed first where the method has a
    posterior); returns the ``compression.json`` record."""
    with RunDir(run_dir).writing("pbc compress"):
        return _compress(load_trained(run_dir), kmeans_bits)


def _compress(trained, kmeans_bits: dict[str, int] | None) -> dict:
    run, config, arch = trained.dir, trained.config, trained.arch
    plan = trained.method.compression_plan(run, config, arch, trained.net)
    empty = [n for n, (in_m, out_m) in plan.masks.items() if not in_m.any() or not out_m.any()]
    if empty:
        raise StageError(f"{run}: every unit of {', '.join(empty)} is pruned, so the network "
                         f"is a constant; train with a weaker prior or fewer pruning steps")
    full = plain_network(arch, plan.state)
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

    pruned_net = plain_network(structured.arch, structured.state)
    quant_state = _with_weights(structured, fixed_w)
    quant_net = plain_network(structured.arch, quant_state)
    kmeans_net = plain_network(structured.arch, _with_weights(structured, kmeans_w))
    extra = {k: v for k, v in structured.state.items()
             if k.rsplit(".", 1)[0] not in structured.weighted}
    meta = packed_meta(structured.arch, extra, {"run": str(run), "prior": config.prior,
                                                "model": config.model, "data": config.data})
    config, data = run_splits(config)
    with Commit(run.path) as commit:       # a kill leaves the old four files or the new four
        staged = {name: commit.path(name) for name in (PRUNED, QUANTISED, PACKED)}
        save_export(staged[PRUNED], structured.arch, structured.state)
        save_export(staged[QUANTISED], structured.arch, quant_state)
        file_bytes = codec.write_pbcz(staged[PACKED], packed, meta)
        decoded = load_packed(staged[PACKED], arch.builder)
        record = _record(run, config, data, layers, packed, meta, file_bytes,
                         {"full": full, "pruned": pruned_net, "quantised": quant_net,
                          "kmeans": kmeans_net, "packed": decoded}, quant_net)
        record["sha256"] = {name: sha256_file(p) for name, p in staged.items()}
        write_json(commit.path(COMPRESSION), record)
    return record


def _record(run, config, data, layers, packed, meta, file_bytes, nets, quant_net) -> dict:
    """The ``compression.json`` record (errors of ``nets`` on the test and validation
    splits, rates, byte counts)."""
    x, y = data.test_x, data.test_y
    same, max_diff = _compare(quant_net, nets["packed"], x)
    sizes = codec.size_report(packed, meta)
    record = {
        "run": str(run), "prior": config.prior, "model": config.model, "data": config.data,
        "layers": layers,
        "error": {k: classification_error(n, x, y) for k, n in nets.items()},
        "val_error": ({k: classification_error(n, data.val_x, data.val_y)
                       for k, n in nets.items()} if config.val else None),
        "rates": _rates(layers, sizes),
        "packed_bytes": file_bytes, "header_bytes": codec.header_bytes(meta),
        "accounted_bytes": sizes["total_bytes"] + codec.header_bytes(meta),
        "size_parts": sizes["layers"],
        "packed_matches_quantised": {"same_argmax": same, "max_abs_logit_diff": max_diff},
        "conventions": __doc__.split("Size conventions")[1].split("\n\nThe four files")[0]
        .strip(),
    }
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
