"""Compression: structured export, quantisation, packed file, size accounting, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pbc.bayes.net import BayesNet
from pbc.bayes.priors import make_prior
from pbc.cli import main
from pbc.compression import codec
from pbc.compression.export import load_compressed
from pbc.compression.masks import kept_weight_mask, propagate_masks
from pbc.compression.plan import structured_export
from pbc.compression.quantise import fixed_point_codes, kmeans_codes
from pbc.nets import build_network, lenet5, lenet300


def test_fixed_point_codes_round_to_the_step():
    w = np.array([[0.26, -0.124, 0.0624], [1.0, -0.51, 0.3]], np.float32)
    codes, book, t = fixed_point_codes(w, t=3)         # step 1/8
    assert t == 3 and book[0] == 0 and book.dtype == np.float32
    np.testing.assert_array_equal(book[codes], np.floor(w / 0.125 + 0.5) * 0.125)
    assert codes[0, 2] == 0                             # 0.0624 rounds to 0 → sparse entry
    assert sorted(book[1:].tolist()) == book[1:].tolist()


def test_fixed_point_codes_lower_the_bits_until_the_codebook_fits():
    w = np.linspace(-1.0, 1.0, 1001, dtype=np.float32)  # 1000 distinct nonzero values
    codes, book, t = fixed_point_codes(w, t=20, max_codes=100)
    # t = 5 gives 2·32 − 1 = 63 nonzero steps in (−1, 1] plus ±1; t = 6 would give 129
    assert t == 5 and book.size <= 100
    np.testing.assert_array_equal(book[codes], np.floor(w / 2**-5 + 0.5) * 2**-5)


def test_kmeans_codebook_size_and_error_on_a_toy_matrix():
    rng = np.random.default_rng(0)
    centres = np.array([-0.5, -0.1, 0.2, 0.7])
    w = (rng.choice(centres, size=(40, 30)) + rng.normal(0, 0.005, (40, 30))).astype(np.float32)
    w[0, :5] = 0.0
    codes, book = kmeans_codes(w, bits=2)
    assert book.size == 1 + 4 and book[0] == 0
    assert np.all(codes[0, :5] == 0) and np.all(codes[w != 0] > 0)
    assert np.abs(book[codes] - w).max() < 0.03
    np.testing.assert_allclose(np.sort(book[1:]), centres, atol=0.005)


def _random_masks(arch, rng):
    groups = {}
    for s in arch.weighted_layers():
        n = s.in_size if s.kind == "linear" else s.out_size
        groups[s.name] = rng.random(n) < 0.6
    return propagate_masks(arch, groups)


@pytest.mark.parametrize("arch_fn", [lenet300, lenet5])
@pytest.mark.parametrize("prior", ["gnj", "ghs"])
def test_structured_export_equals_masked_posterior_mean(arch_fn, prior):
    torch.manual_seed(0)
    arch = arch_fn()
    net = BayesNet(arch, make_prior(prior, tau0=0.1))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = net.posterior_mean_state_dict()
    masks = _random_masks(arch, np.random.default_rng(1))
    masked = {}
    for k, v in state.items():
        name, kind = k.rsplit(".", 1)
        if name in masks:
            in_m, out_m = masks[name]
            if kind == "weight":
                spec = next(s for s in arch.layers if s.name == name)
                keep = kept_weight_mask(spec.kind, tuple(v.shape), in_m, out_m)
                v = v * torch.from_numpy(np.ascontiguousarray(keep))
            else:
                v = v * torch.from_numpy(out_m)
        masked[k] = v
    reference = build_network(arch).eval()
    reference.load_state_dict(masked)
    s = structured_export(arch, state, masks)
    small = build_network(s.arch).eval()
    small.load_state_dict(s.state)
    x = torch.rand(16, *arch.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(small(x), reference(x), rtol=1e-5, atol=1e-5)
    n_small = sum(small.state_dict()[f"{n}.weight"].numel() for n in s.weighted)
    n_kept = sum(int(kept_weight_mask(sp.kind, (sp.out_size, sp.in_size, sp.kernel, sp.kernel)
                                      if sp.kind == "conv" else (sp.out_size, sp.in_size),
                                      *masks[sp.name]).sum()) for sp in arch.weighted_layers())
    assert n_small == n_kept
    if arch.name == "lenet300":
        assert s.arch.layers[1].kind == "select"       # single pixels removed from fc1's inputs


def test_deep_compression_lenet300_arithmetic():
    """Han et al. (2015), Table 3: LeNet-300-100 with 8% of the weights kept, 6-bit weights
    and 5-bit relative indices stores 32 / (0.08 · (6 + 5)) ≈ 36× smaller before Huffman
    coding; filler entries (gaps ≥ 32 at 8% density) cost a little of that."""
    rng = np.random.default_rng(0)
    shapes = [(300, 784), (100, 300), (10, 100)]
    n_total = sum(a * b for a, b in shapes)
    bits = 0
    for shape in shapes:
        codes = np.where(rng.random(shape) < 0.08, rng.integers(1, 64, shape), 0)
        gaps, values = codec.relative_csr(codes.ravel(), index_bits=5)
        bits += gaps.size * (6 + 5) + 64 * 32          # fixed-width entries + codebook
    rate = 32 * n_total / bits
    assert 32 / (0.08 * 11) == pytest.approx(36.36, abs=0.01)
    assert 33.0 < rate < 36.4


@pytest.fixture
def analysed_run(trained_runs, tmp_path):
    """A copy of the session's tiny LeNet-5 GHS run, analysed (8 draws, no figures)."""
    return trained_runs.copy(tmp_path / "run", "lenet5", "ghs", "analysed")


def test_compress_end_to_end(analysed_run, tiny_data, capsys):
    run = analysed_run
    assert main(["compress", str(run)]) == 0
    rec = json.loads((run / "compression.json").read_text())
    assert rec["packed_bytes"] == (run / "model.pbcz").stat().st_size == rec["accounted_bytes"]
    assert rec["packed_matches_quantised"] == {"same_argmax": True, "max_abs_logit_diff": 0.0}
    assert rec["error"]["packed"] == rec["error"]["quantised"]
    rates = rec["rates"]
    assert set(rates) == {"nonzero_fraction", "pruning", "fast_prediction", "max_compression"}
    assert all(rates[k] >= 1.0 for k in ("pruning", "fast_prediction", "max_compression"))
    n_w = sum(r["weights_total"] for r in rec["layers"])
    n_nz = sum(r["weights_nonzero"] for r in rec["layers"])
    assert rates["nonzero_fraction"] == pytest.approx(n_nz / n_w)
    assert rates["pruning"] == pytest.approx(n_w / n_nz)
    assert rates["fast_prediction"] == pytest.approx(
        32 * n_w / sum(r["weights_kept"] * r["bits"] for r in rec["layers"]))
    for row in rec["layers"]:
        assert {"name", "groups_total", "groups_kept", "bits"} <= set(row)
    capsys.readouterr()
    assert main(["evaluate", str(run / "model.pbcz"), "--data-dir", str(tiny_data)]) == 0
    assert f"test error {rec['error']['packed']:.4f}" in capsys.readouterr().out
    assert main(["evaluate", str(run / "pruned.pt"), "--data-dir", str(tiny_data)]) == 0
    assert f"test error {rec['error']['pruned']:.4f}" in capsys.readouterr().out


def test_exported_networks_load_without_pyro(trained_runs):
    run = trained_runs.path("lenet5", "gnj", "compressed")      # read only (shared with bench)
    paths = [str(run / f) for f in ("model.pbcz", "pruned.pt", "quantised.pt")]
    code = ("import sys; from pbc.compression.export import load_compressed; "
            f"[load_compressed(p) for p in {paths!r}]; "
            "assert 'pyro' not in sys.modules, 'pyro imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_load_compressed_rejects_other_files(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"weights": torch.ones(2)}, p)
    from pbc.io import ArtefactError

    with pytest.raises(ArtefactError, match="not a pbc compressed network"):
        load_compressed(p)
