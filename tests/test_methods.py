"""Adding a method is one module and one registry line: a toy method, registered for one
test, goes through the train and compress stages (and the command line) unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config

from pbc import methods
from pbc.cli import main
from pbc.compress import compress
from pbc.compression.export import load_compressed
from pbc.compression.plan import unstructured_plan
from pbc.compression.quantise import Quantised, kmeans_codes
from pbc.methods import Method
from pbc.train import train

BITS = 4


class Magnitude(Method):
    """A plain network trained by cross-entropy (the :class:`Method` defaults); compressed
    by keeping the larger-|w| half of each layer's weights, shared on a 2^4-entry k-means
    codebook.  All it writes is the compression plan."""

    name = "magnitude"

    def compression_plan(self, run, config, arch, net):
        state = {k: v.detach().cpu() for k, v in self.plain_state(net).items()}
        keep = {}
        for spec in arch.weighted_layers():
            w = state[f"{spec.name}.weight"]
            top = torch.topk(w.abs().flatten(), w.numel() // 2).indices
            mask = torch.zeros(w.numel(), dtype=torch.bool)
            mask[top] = True
            keep[spec.name] = mask.view_as(w).numpy()

        def quantise(name: str, w: np.ndarray) -> Quantised:
            codes, codebook = kmeans_codes(w, BITS)
            return Quantised(codes, codebook, {"bits": BITS})

        return unstructured_plan(arch, state, keep, quantise)


@pytest.fixture
def magnitude(monkeypatch):
    """The toy method, registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    return methods.register(Magnitude())


def test_registration_is_undone(magnitude):
    assert methods.get("magnitude") is magnitude and "magnitude" in methods.names()


def test_registry_is_clean_again():
    assert "magnitude" not in methods.METHODS
    with pytest.raises(ValueError, match="unknown prior 'magnitude'"):
        methods.get("magnitude")


def test_a_new_method_trains_and_compresses_through_the_stages(magnitude, tiny_data, tmp_path,
                                                               capsys, cpu_threads):
    res = train(tiny_config(tmp_path / "run", tiny_data, prior="magnitude", epochs=2))
    run = res.out
    assert json.loads((run / "config.json").read_text())["config"]["prior"] == "magnitude"
    assert [m["epoch"] for m in res.metrics] == [1, 2] and "cross_entropy" in res.metrics[0]

    rec = compress(run)
    assert rec == json.loads((run / "compression.json").read_text())
    assert rec["prior"] == "magnitude"
    layers = rec["layers"]
    assert [r["name"] for r in layers] == ["fc1", "fc2", "fc3"]
    for r in layers:                       # exactly half of every layer's weights survive
        assert r["weights_nonzero"] == r["weights_total"] // 2
        assert r["bits"] == BITS and r["codebook_size"] <= 2**BITS + 1
        assert r["threshold"] is None
    rates = rec["rates"]
    n_w = sum(r["weights_total"] for r in layers)
    assert rates["nonzero_fraction"] == pytest.approx(0.5)
    assert rates["pruning"] == pytest.approx(2.0)
    assert rates["fast_prediction"] == pytest.approx(
        32 * n_w / sum(r["weights_kept"] * BITS for r in layers))
    assert rates["fast_prediction"] >= 32 / BITS   # pruned units only shrink the dense layers
    assert rates["max_compression"] > rates["pruning"]

    # the packed file decodes to the quantised network, bit for bit
    assert rec["packed_matches_quantised"] == {"same_argmax": True, "max_abs_logit_diff": 0.0}
    assert rec["error"]["packed"] == rec["error"]["quantised"]
    assert rec["packed_bytes"] == (run / "model.pbcz").stat().st_size == rec["accounted_bytes"]
    packed, quantised = (load_compressed(run / f) for f in ("model.pbcz", "quantised.pt"))
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(packed(x), quantised(x))
    for name in ("fc1", "fc2", "fc3"):
        w = quantised.state_dict()[f"{name}.weight"]
        assert torch.unique(w[w != 0]).numel() <= 2**BITS

    # the command line knows the method from the registry alone
    capsys.readouterr()
    assert main(["evaluate", str(run / "model.pbcz"), "--data-dir", str(tiny_data)]) == 0
    assert f"test error {rec['error']['packed']:.4f}" in capsys.readouterr().out
    assert main(["train", "--prior", "magnitude", "--data-dir", str(tiny_data), "--subset",
                 "30", "--batch-size", "30", "--epochs", "1", "--threads", "1",
                 "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["config"]["prior"] == \
        "magnitude"
