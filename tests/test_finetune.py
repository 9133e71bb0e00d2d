"""Fine-tuning on the kept groups: layers that lose groups for good, the analyse and compress
stages on such a posterior, and ``pbc finetune`` (config, removed groups, resume, refusals)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import fresh_train, one_line_error, tiny_arch
from test_train import _interrupt_at_epoch, _strip

from pbc.analysis import analyse
from pbc.bayes.elbo import MeanFieldELBO
from pbc.bayes.net import BayesNet
from pbc.bayes.priors import GroupHorseshoe, GroupNormalJeffreys
from pbc.bayes.summaries import layer_moments
from pbc.cli import main
from pbc.compress import compress
from pbc.compression.masks import kept_groups, structured_masks
from pbc.finetune import finetune_config
from pbc.io import load_torch
from pbc.reporting.tables import protocol
from pbc.rundir import load_trained, read_run

PRIORS = {"gnj": GroupNormalJeffreys, "ghs": GroupHorseshoe}
# conv1's second channel feeds fc1's inputs 4–7, which go with it
KEEP = {"conv1": np.array([True, False]),
        "fc1": np.array([True, False, True, True, True, True, True, True]),
        "fc2": np.array([True, True, False, True, False])}


def _tiny_net(prior: str) -> BayesNet:
    torch.manual_seed(0)
    return BayesNet(tiny_arch(), PRIORS[prior]())


def _expected_loglik(net, x, y) -> torch.Tensor:
    torch.manual_seed(5)
    terms = MeanFieldELBO().terms(net.model, net.guide, x, y, subsample=torch.arange(len(x)),
                                  size=len(x))
    return terms.expected_loglik.detach()


@pytest.mark.parametrize("prior", PRIORS)
def test_a_removed_group_reaches_neither_the_likelihood_nor_the_posterior_mean(prior):
    net = _tiny_net(prior)
    whole = copy.deepcopy(net)
    net.remove_groups({k: torch.as_tensor(v) for k, v in KEEP.items()})
    x, y = torch.randn(6, 1, 3, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    before = _expected_loglik(net, x, y)
    conv1, fc1, fc2 = (net.body.get_submodule(n) for n in ("conv1", "fc1", "fc2"))
    with torch.no_grad():
        conv1.w_loc[1] += 3.0
        conv1.b_loc[1] += 3.0
        fc1.w_loc[:, 1] += 3.0
        fc2.w_loc[:, [2, 4]] += 3.0
    assert torch.equal(_expected_loglik(net, x, y), before)
    with torch.no_grad():
        fc1.w_loc[:, 0] += 3.0                                   # a kept group does
    assert not torch.equal(_expected_loglik(net, x, y), before)

    mean, whole_mean = net.posterior_mean_state_dict(), whole.posterior_mean_state_dict()
    assert torch.equal(mean["conv1.weight"][1], torch.zeros_like(mean["conv1.weight"][1]))
    assert mean["conv1.bias"][1] == 0
    assert torch.equal(mean["conv1.weight"][0], whole_mean["conv1.weight"][0])
    assert torch.equal(mean["fc2.weight"][:, [2, 4]], torch.zeros(3, 2))
    assert torch.equal(mean["fc2.weight"][:, [0, 1, 3]], whole_mean["fc2.weight"][:, [0, 1, 3]])


@pytest.mark.parametrize("prior", PRIORS)
def test_removed_groups_are_pruned_at_every_threshold(prior):
    net = _tiny_net(prior)
    net.remove_groups({"fc1": torch.as_tensor(KEEP["fc1"])})
    posts = {layer.site: layer_moments(layer) for layer in net.bayes_layers()}
    fc1 = posts["fc1"]
    assert fc1.removed.tolist() == (~KEEP["fc1"]).tolist() and posts["fc2"].removed is None
    assert np.all(fc1.w_mean[:, 1] == 0) and np.all(fc1.w_var[:, 1] == 0)
    assert np.all(fc1.w_var[:, 0] > 0)
    assert fc1.open_scores.tolist() == fc1.score[KEEP["fc1"]].tolist()
    keep_all = {n: np.inf for n in posts}
    masks = structured_masks(tiny_arch(), posts, keep_all)
    assert masks["fc1"][0].tolist() == KEEP["fc1"].tolist()
    assert kept_groups(tiny_arch(), posts, keep_all)["fc1"].tolist() == KEEP["fc1"].tolist()


def test_removal_accumulates_and_travels_in_the_state_dict():
    net = _tiny_net("gnj")
    net.remove_groups({"fc2": torch.tensor([True, False, True, True, True])})
    net.remove_groups({"fc2": torch.tensor([True, True, False, True, True])})
    assert net.body.fc2.kept_groups.tolist() == [1, 0, 0, 1, 1]
    state = net.state_dict()
    other = _tiny_net("gnj")
    other.load_state_dict(state)
    assert other.body.fc2.kept_groups.tolist() == [1, 0, 0, 1, 1]
    assert other.posterior_mean_state_dict()["fc2.weight"][:, 1].abs().sum() == 0
    # a state saved before layers could lose groups loads with every group kept
    older = {k: v for k, v in state.items() if not k.endswith("kept_groups")}
    other.load_state_dict(older)
    assert all(bool(layer.kept_groups.all()) for layer in other.bayes_layers())
    assert other.posterior_mean_state_dict()["fc2.weight"][:, 1].abs().sum() > 0
    with pytest.raises(ValueError, match="fc2"):
        net.remove_groups({"fc2": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(KeyError, match="fc9"):
        net.remove_groups({"fc9": torch.ones(4, dtype=torch.bool)})


# ----------------------------------------------------------------------------- the stage
def _analysed_source(trained_runs, dst, prior):
    """A copy of the shared tiny run, analysed at each layer's median score: about half of
    every layer's groups pruned.  Returns (run, thresholds, kept groups)."""
    src = trained_runs.copy(dst, "lenet300", prior, "trained")
    trained = load_trained(src)
    posts = {layer.site: layer_moments(layer) for layer in trained.net.bayes_layers()}
    thresholds = {n: float(np.median(p.score)) for n, p in posts.items()}
    analyse(src, draws=8, figures=False, thresholds=thresholds)
    return src, thresholds, kept_groups(trained.arch, posts, thresholds)


@pytest.mark.parametrize("prior", PRIORS)
def test_finetune_trains_the_kept_groups_into_a_run_that_analyses_and_compresses(
        trained_runs, tmp_path, capsys, prior):
    src, _, keep = _analysed_source(trained_runs, tmp_path / "src", prior)
    record = json.loads((src / "config.json").read_text())
    record["config"]["resume"] = True                 # as a run that was resumed records it
    (src / "config.json").write_text(json.dumps(record))
    assert finetune_config(src, str(tmp_path / "x"), 1, 1e-3, "cosine").resume is False
    new = tmp_path / "ft"
    assert main(["finetune", str(src), "--out", str(new), "--epochs", "2", "--threads", "1",
                 "--no-progress"]) == 0
    assert f"next: pbc analyse {new}" in capsys.readouterr().out

    saved = json.loads((src / "config.json").read_text())["config"]
    config = json.loads((new / "config.json").read_text())["config"]
    assert config["finetune_from"] == str(src) and config["epochs"] == 2
    assert config["lr_schedule"] == "cosine" and config["kl_warmup"] == 0
    for key in ("model", "prior", "seed", "subset", "val", "batch_size", "max_weight_var",
                "tau0"):
        assert config[key] == saved[key], key
    assert len((new / "metrics.jsonl").read_text().splitlines()) == 2

    tuned = load_trained(new)
    for layer in tuned.net.bayes_layers():
        assert layer.kept_groups.bool().tolist() == keep[layer.site].tolist(), layer.site
    source = load_trained(src).net
    moved = [not torch.equal(a.w_loc, b.w_loc)
             for a, b in zip(tuned.net.bayes_layers(), source.bayes_layers(), strict=True)]
    assert all(moved)                                  # it trained

    # thresholds above every score keep every group the fine-tuning kept, and no other
    analyse(new, draws=8, figures=False, thresholds={n: 1e9 for n in keep})
    histograms = json.loads((new / "analysis.json").read_text())["histograms"]
    assert {n: sum(h["counts"]) for n, h in histograms.items()} == \
        {n: int(k.sum()) for n, k in keep.items()}          # the scores a threshold decides
    record = compress(new)
    units = {row["name"]: row["in_kept"] for row in record["layers"]}
    assert units == {n: int(k.sum()) for n, k in keep.items()}
    assert protocol(read_run(new)).startswith("2 ep. fine-tuning src on its kept groups")


def test_finetune_resumes_to_the_uninterrupted_run(trained_runs, tmp_path, monkeypatch):
    src, _, _ = _analysed_source(trained_runs, tmp_path / "src", "gnj")

    def config(out, resume=False):
        return finetune_config(src, str(out), 2, 1e-3, "cosine", threads=1, progress=False,
                               resume=resume)

    full = fresh_train(config(tmp_path / "full"))
    with monkeypatch.context() as m:
        _interrupt_at_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            fresh_train(config(tmp_path / "part"))
    resumed = fresh_train(config(tmp_path / "part", resume=True))
    assert _strip(resumed.metrics) == _strip(full.metrics)
    a = load_torch(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_torch(tmp_path / "part" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("kept_groups") and not bool(a[k].all()) for k in a)


def test_finetune_refuses_an_unanalysed_run_and_a_prior_without_groups(trained_runs, tmp_path,
                                                                        capsys):
    for run, out, needle in ((trained_runs.path("lenet300", "gnj", "trained"), "a",
                              "pbc analyse"),
                             (trained_runs.path("lenet300", "svd", "analysed"), "b",
                              "no group scales")):
        with pytest.raises(SystemExit) as exit_:
            main(["finetune", str(run), "--out", str(tmp_path / out)])
        assert exit_.value.code == 2
        one_line_error(capsys.readouterr().err, needle)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
