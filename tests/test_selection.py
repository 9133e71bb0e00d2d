"""Choosing on the validation split: the split itself, and the error-budget threshold rule
on a posterior whose best thresholds are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pbc.analysis import analyse
from pbc.analysis.budget import (
    _thresholds_for,
    budget_thresholds,
    kept_weights,
    pruned_quantised_state,
)
from pbc.analysis.frontier import FRONTIER, frontier
from pbc.bayes.summaries import LayerPosterior, layer_moments
from pbc.cli import main
from pbc.compress import compress
from pbc.compression.export import load_export
from pbc.config import TrainConfig
from pbc.data import default_val_size, load_dataset, split, validation_indices
from pbc.io import ArtefactError
from pbc.nets import Architecture, LayerSpec, build_network
from pbc.rundir import load_trained
from pbc.train import train


# ---------------------------------------------------------------------------- the split
def test_validation_split_is_disjoint_complete_and_reproducible():
    tr, va = validation_indices(1000, 100, seed=3)
    assert va.numel() == 100 and tr.numel() == 900
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    again = validation_indices(1000, 100, seed=3)
    assert torch.equal(again[0], tr) and torch.equal(again[1], va)
    torch.manual_seed(123)           # the global RNG does not enter
    assert torch.equal(validation_indices(1000, 100, seed=3)[1], va)
    assert not torch.equal(validation_indices(1000, 100, seed=4)[1], va)
    assert validation_indices(10, 0, seed=0)[1].numel() == 0
    with pytest.raises(ValueError, match="--val"):
        validation_indices(10, 10, seed=0)


def test_default_val_size():
    assert default_val_size(60_000) == 5000
    assert default_val_size(50_000) == 5000 and default_val_size(200) == 20


def test_split_holds_out_of_the_training_set_only(idx_dir):
    data = load_dataset("fashion-mnist", idx_dir)
    s = split(data, 20, seed=0, subset=100)
    assert s.train_x.shape[0] == 80 and s.val_x.shape[0] == 20
    assert torch.equal(s.test_x, data.test_x)
    rows = {tuple(r.tolist()) for r in data.train_x[:100].reshape(100, -1)}
    held = {tuple(r.tolist()) for r in s.val_x.reshape(20, -1)}
    used = {tuple(r.tolist()) for r in s.train_x.reshape(80, -1)}
    assert held <= rows and used <= rows and held.isdisjoint(used)


def test_train_records_the_split_and_resume_keeps_it(idx_dir, tmp_path):
    out = tmp_path / "r"
    res = train(TrainConfig(out=str(out), model="lenet300", prior="gnj", data_dir=str(idx_dir),
                            epochs=1, subset=100, progress=False))
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["val"] == 10                       # 10% of the 100 examples
    assert saved["dataset"]["train"] == 90 and saved["dataset"]["val"] == 10
    assert 0 <= res.metrics[-1]["val_error"] <= 1
    with pytest.raises(ArtefactError, match="val"):
        train(TrainConfig(out=str(out), model="lenet300", prior="gnj", data_dir=str(idx_dir),
                          epochs=2, subset=100, val=20, resume=True, progress=False))


# ---------------------------------------------------------------------------- the budget rule
def _linear_posteriors(state, scores, w_var):
    """Posteriors of linear layers whose means are ``state``'s weights, every weight of
    variance ``w_var``, with the given prune scores (log α) per layer."""
    return {name: LayerPosterior(
        name=name, kind="linear", z_mean=None, z_var=None, e_log_z=None, log_mode=None,
        log_alpha=scores[name], w_mean=state[f"{name}.weight"].double().numpy(),
        w_var=np.full(tuple(state[f"{name}.weight"].shape), w_var),
        b_mean=state[f"{name}.bias"].double().numpy()) for name in scores}


def _toy():
    """y = [x0 + x1 − x2 − x3 > 0]; inputs 4–7 reach only hidden units 2–5, which the output
    ignores.  The prunable groups (fc1 inputs 4–7, fc2 inputs 2–5) have the highest scores."""
    arch = Architecture("toy", (1, 1, 8), (
        LayerSpec("flatten", "flatten"), LayerSpec("linear", "fc1", 8, 6),
        LayerSpec("relu", "relu1"), LayerSpec("linear", "fc2", 6, 2)))
    w1 = torch.zeros(6, 8)
    w1[0, :4] = torch.tensor([1.0, 1.0, -1.0, -1.0])
    w1[1, :4] = -w1[0, :4]
    w1[2:, 4:] = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    w2 = torch.zeros(2, 6)
    w2[1, 0], w2[1, 1], w2[0, 0], w2[0, 1] = 1.0, -1.0, -1.0, 1.0
    state = {"fc1.weight": w1, "fc1.bias": torch.zeros(6),
             "fc2.weight": w2, "fc2.bias": torch.zeros(2)}
    scores = {"fc1": np.array([-5.0, -5.1, -5.2, -5.3, 2.0, 2.1, 2.2, 2.3]),
              "fc2": np.array([-5.0, -5.1, 2.0, 2.1, 2.2, 2.3])}
    posts = _linear_posteriors(state, scores, w_var=1e-6)
    x = torch.randn(400, 1, 1, 8, generator=torch.Generator().manual_seed(1))
    y = (x[:, 0, 0, 0] + x[:, 0, 0, 1] - x[:, 0, 0, 2] - x[:, 0, 0, 3] > 0).long()
    return arch, state, posts, x, y


def _kept(posts, thresholds):
    return {n: int((p.score <= thresholds[n]).sum()) for n, p in posts.items()}


def test_budget_rule_prunes_exactly_the_groups_the_data_does_not_need():
    arch, state, posts, x, y = _toy()
    found = budget_thresholds(arch, state, posts, x, y, budget=0.0)
    assert found.unpruned_error == 0.0 and found.error == 0.0
    assert _kept(posts, found.thresholds) == {"fc1": 4, "fc2": 2}
    assert found.evaluations < 40


def test_budget_rule_spends_a_budget_only_where_it_buys_compression():
    """With the needed input of lowest importance given the highest score, a zero budget keeps
    it; a budget larger than its cost prunes it too."""
    arch, state, posts, x, y = _toy()
    posts["fc1"].log_alpha[3] = 9.0                   # input 3 (needed) now ranks first
    strict = budget_thresholds(arch, state, posts, x, y, budget=0.0)
    assert _kept(posts, strict.thresholds)["fc1"] == 8   # pruning input 3 first costs error
    net = build_network(arch).eval()
    net.load_state_dict(pruned_quantised_state(arch, state, posts, {"fc1": 8.0, "fc2": 10.0}))
    cost = (net(x).argmax(-1) != y).float().mean().item()
    assert cost > 0
    # pruning it changes the prediction of every example it gets wrong (e₀ = 0)
    margin = math.sqrt(cost * len(y)) / len(y)
    loose = budget_thresholds(arch, state, posts, x, y, budget=cost + margin + 0.01)
    assert _kept(posts, loose.thresholds)["fc1"] < 8
    assert loose.error + math.sqrt(loose.changed) / len(y) <= cost + margin + 0.01
    # a budget that covers the cost but not its standard error keeps the input
    exact = budget_thresholds(arch, state, posts, x, y, budget=cost)
    assert _kept(posts, exact.thresholds)["fc1"] == 8 and exact.changed == 0


def test_budget_rule_prunes_when_rounding_at_the_posterior_bits_alone_costs_the_budget():
    """A wide posterior (t₀ = 1 bit, step ½) and needed weights that step rounds badly: at
    t₀ the unpruned network already costs more than the budget, so pruning at t₀ is never
    accepted; the trials round finer until the unpruned network fits in half the budget, then
    prune exactly the groups the data does not need."""
    arch, state, posts, _, _ = _toy()
    a = torch.tensor([1.3, 0.9, -1.1, -0.7])
    state["fc1.weight"][0, :4], state["fc1.weight"][1, :4] = a, -a
    for name, p in posts.items():
        p.w_mean = state[f"{name}.weight"].double().numpy()
        p.w_var = np.full(p.w_mean.shape, 0.6)         # significand_bits(0.6) = 1
    x = torch.randn(2000, 1, 1, 8, generator=torch.Generator().manual_seed(2))
    y = (x[:, 0, 0, :4] @ a > 0).long()
    none = {"fc1": 10.0, "fc2": 10.0}
    net = build_network(arch).eval()
    net.load_state_dict(pruned_quantised_state(arch, state, posts, none))
    pred = net(x).argmax(-1)
    at_t0 = (pred != y).float().mean().item() + math.sqrt((pred != y).sum().item()) / len(y)
    budget = 0.04
    assert at_t0 > budget             # rounding at t₀ alone exceeds the budget (e₀ = 0)
    paper = budget_thresholds(arch, state, posts, x, y, budget, precision="posterior")
    assert _kept(posts, paper.thresholds) == {"fc1": 8, "fc2": 6}
    found = budget_thresholds(arch, state, posts, x, y, budget)
    assert found.unpruned_error == 0.0 and found.finer_bits >= 1
    assert _kept(posts, found.thresholds) == {"fc1": 4, "fc2": 2}
    assert found.error + math.sqrt(found.changed) / len(y) <= budget


def _random_toy(seed: int):
    """A random 8-6-3 network, its own predictions as labels with 10% of them redrawn, and
    random prune scores: a posterior on which no group is free to prune."""
    g = torch.Generator().manual_seed(seed)
    arch = Architecture("toy", (1, 1, 8), (
        LayerSpec("flatten", "flatten"), LayerSpec("linear", "fc1", 8, 6),
        LayerSpec("relu", "relu1"), LayerSpec("linear", "fc2", 6, 3)))
    state = {"fc1.weight": torch.randn(6, 8, generator=g), "fc1.bias": torch.zeros(6),
             "fc2.weight": torch.randn(3, 6, generator=g), "fc2.bias": torch.zeros(3)}
    net = build_network(arch).eval()
    net.load_state_dict(state)
    x = torch.randn(500, 1, 1, 8, generator=g)
    with torch.no_grad():
        y = net(x).argmax(-1)
    y = torch.where(torch.rand(500, generator=g) < 0.1, torch.randint(0, 3, (500,), generator=g), y)
    rng = np.random.default_rng(seed)
    scores = {name: rng.normal(size=state[f"{name}.weight"].shape[1]) for name in ("fc1", "fc2")}
    posts = _linear_posteriors(state, scores, w_var=1e-8)
    return arch, state, posts, x, y


@pytest.mark.parametrize("seed, budget, best_removed", [(21, 0.35, 34), (12, 0.2, 18)])
def test_budget_rule_reaches_the_most_compression_within_the_budget(seed, budget, best_removed):
    """Brute force over all 8 × 6 pairs of thresholds gives the most weights that any setting
    within the budget removes.  Neither greedy search finds it on both posteriors (on seed 21
    the layer-by-layer bisection removes 26, on seed 12 the cheapest-first search 11); the
    rule keeps the better of the two and finds it on both."""
    arch, state, posts, x, y = _random_toy(seed)
    rules = {n: _thresholds_for(p.score) for n, p in posts.items()}   # k ↦ prunes k highest
    net = build_network(arch).eval()

    def predict(thresholds):
        net.load_state_dict(pruned_quantised_state(arch, state, posts, thresholds))
        with torch.no_grad():
            return net(x).argmax(-1)

    unpruned = {n: rules[n](0) for n in posts}
    pred0 = predict(unpruned)
    e0 = (pred0 != y).float().mean().item()
    total = kept_weights(arch, posts, unpruned)
    best = 0
    for k1 in range(8):
        for k2 in range(6):
            t = {"fc1": rules["fc1"](k1), "fc2": rules["fc2"](k2)}
            pred = predict(t)
            bound = ((pred != y).float().mean() + (pred != pred0).sum().sqrt() / len(y)).item()
            if bound <= e0 + budget:
                best = max(best, total - kept_weights(arch, posts, t))
    assert best == best_removed
    found = budget_thresholds(arch, state, posts, x, y, budget, precision="posterior")
    assert total - kept_weights(arch, posts, found.thresholds) == best
    assert found.error + math.sqrt(found.changed) / len(y) <= e0 + budget


def test_budget_rule_needs_a_validation_split():
    arch, state, posts, x, y = _toy()
    with pytest.raises(ValueError, match="validation"):
        budget_thresholds(arch, state, posts, x[:0], y[:0], budget=0.005)


def test_budget_evaluator_is_the_compressed_network(idx_dir, tmp_path):
    """What the search evaluates is what the compress stage writes (quantised.pt)."""
    run = train(TrainConfig(out=str(tmp_path / "r"), model="lenet300", prior="gnj",
                            data_dir=str(idx_dir), epochs=1, subset=100, lr=3e-3,
                            progress=False)).out
    analyse(run, draws=40, figures=False)
    sel = json.loads((run / "analysis.json").read_text())["selection"]
    assert sel["rule"] == "budget" and sel["val_examples"] == 10
    assert sel["search"] == "by-layer+cheapest-first"
    assert sel["val_error_pruned_quantised"] <= sel["val_error_unpruned"] + 0.005
    rec = compress(run)
    assert rec["val_error"]["quantised"] == pytest.approx(sel["val_error_pruned_quantised"])
    trained = load_trained(run)
    record = json.loads((run / "analysis.json").read_text())
    assert record["selection"]["precision"] == "budget"
    layers = pd.read_csv(run / "layers.csv").set_index("layer")
    assert (layers["significand_bits"] <= layers["posterior_significand_bits"]).all()
    assert layers["significand_bits"].to_dict() == record["significand_bits"]
    posts = {layer.site: layer_moments(layer) for layer in trained.net.bayes_layers()}
    ours = build_network(trained.arch).eval()
    ours.load_state_dict(pruned_quantised_state(
        trained.arch, trained.method.plain_state(trained.net), posts, record["thresholds"],
        record["significand_bits"]))
    x = load_dataset("fashion-mnist", idx_dir).test_x
    with torch.no_grad():
        torch.testing.assert_close(ours(x), load_export(run / "quantised.pt")(x),
                                   atol=1e-4, rtol=1e-4)


def test_budget_precision_is_the_fewest_bits_that_keep_every_prediction():
    """With fc1's needed weights ±1 and ±0.75 (exact at a step of 2^−2, not 2^−1) and fc2's
    ±1 (exact at any step), a zero budget coarsens the posterior's 20 significand bits (its
    variance is 1e-6) to 2 and 1; ``precision="posterior"`` keeps 20."""
    arch, state, posts, x, y = _toy()
    for row, sign in ((0, 1.0), (1, -1.0)):
        state["fc1.weight"][row, 3] = -0.75 * sign
    posts["fc1"].w_mean[:] = state["fc1.weight"].double().numpy()
    y = (x[:, 0, 0, 0] + x[:, 0, 0, 1] - x[:, 0, 0, 2] - 0.75 * x[:, 0, 0, 3] > 0).long()
    found = budget_thresholds(arch, state, posts, x, y, budget=0.0)
    assert found.error == 0.0 and _kept(posts, found.thresholds) == {"fc1": 4, "fc2": 2}
    assert found.significand_bits == {"fc1": 2, "fc2": 1}
    net = build_network(arch).eval()
    net.load_state_dict(pruned_quantised_state(arch, state, posts, found.thresholds,
                                               {"fc1": 1, "fc2": 1}))
    assert (net(x).argmax(-1) != y).any()          # one bit fewer in fc1 changes predictions
    paper = budget_thresholds(arch, state, posts, x, y, budget=0.0, precision="posterior")
    assert paper.significand_bits == {"fc1": 20, "fc2": 20}
    assert paper.thresholds == found.thresholds


# ------------------------------------------------------------------------------- the frontier
def test_frontier_rows_are_analyse_and_compress_at_each_budget(trained_runs, tmp_path, capsys):
    run = trained_runs.copy(tmp_path / "run", "lenet300", "gnj", "trained")
    before = sorted(p.name for p in run.iterdir())
    table = frontier(run, [1.0, 0.0])
    assert list(table["budget_points"]) == [0.0, 1.0]
    # the run's own artefacts stay as they were; no scratch copy is left
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, FRONTIER])
    pd.testing.assert_frame_equal(pd.read_csv(run / FRONTIER), table, check_dtype=False)
    for _, row in table.iterrows():     # the rule's guarantee, at every budget
        assert row.val_error_pruned_quantised <= (row.val_error_unpruned
                                                  + row.budget_points / 100 + 1e-12)
    # a row is what `pbc analyse --error-budget 1` and `pbc compress` record
    same = trained_runs.copy(tmp_path / "same", "lenet300", "gnj", "trained")
    analyse(same, draws=8, figures=False, error_budget=1.0)
    rec = compress(same)
    row = table.iloc[1]
    assert row.test_error_packed == pytest.approx(rec["error"]["packed"])
    assert row.val_error_packed == pytest.approx(rec["val_error"]["packed"])
    assert row.fast_prediction == pytest.approx(rec["rates"]["fast_prediction"])
    assert row.max_compression == pytest.approx(rec["rates"]["max_compression"])
    assert row.groups_kept == "-".join(str(r["groups_kept"]) for r in rec["layers"])
    assert row.bits == "-".join(str(r["bits"]) for r in rec["layers"])
    assert main(["frontier", str(run), "--budgets", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("budget 0.5: validation ") and FRONTIER in out
    assert list(pd.read_csv(run / FRONTIER)["budget_points"]) == [0.5]
    with pytest.raises(SystemExit):
        main(["frontier", str(run), "--budgets", "0.5,-1"])
