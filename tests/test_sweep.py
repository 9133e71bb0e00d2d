"""Sweeps: a spec's expansion, a 2 × 2 sweep on local Ray and its summary, a rerun that trains
nothing, a killed worker whose run resumes to the undisturbed result, the directory lock, the
report's mean ± sd, and selection on the validation split.

Ray runs with 2 CPUs and one torch thread per run; the runs are 1–3 epochs on generated
data."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import one_line_error

from pbc import cli
from pbc.data import write_synthetic_dataset
from pbc.io import ArtefactError
from pbc.reporting.pdf import build_report
from pbc.sweep import SpecError, SweepError, expand, load_spec, run_sweep
from pbc.sweep.pipeline import attempts, log_path
from pbc.sweep.spec import PlannedRun
from pbc.sweep.summary import read_summary, select

ROOT = Path(__file__).resolve().parent.parent
TINY = {"data": "fashion-mnist", "epochs": 1, "subset": 200, "batch_size": 20, "draws": 40,
        "figures": False, "bench_batch": 64, "bench_repeats": 2}


def _spec(tmp: Path, text: str) -> Path:
    path = tmp / "spec.toml"
    path.write_text(text)
    return path


def _lines(sink: list[str]):
    return sink.append


# ------------------------------------------------------------------------------ the spec
def test_spec_expands_axes_seeds_and_shares_plain_nets():
    plan = expand({"data": "fashion-mnist", "seed": [0, 1], "pretrain_epochs": 2, "grid": [
        {"model": "lenet300", "prior": ["gnj", "svd"], "epochs": 3},
        {"model": "lenet300", "prior": "sws", "sws_tau": [0.1, 0.2]},
        {"model": "lenet300", "prior": "gnj", "pretrain_epochs": 0, "label": "scratch"},
        {"model": "lenet300", "prior": "none", "epochs": 2}]})
    ids = [r.id for r in plan.runs]
    # plain nets first; the none block is the same run as the pretraining: one per seed
    assert ids[:2] == ["lenet300-none/seed0", "lenet300-none/seed1"]
    assert sorted(ids[2:7]) == sorted(f"{c}/seed0" for c in (
        "lenet300-gnj", "lenet300-svd", "lenet300-sws-sws_tau0.1", "lenet300-sws-sws_tau0.2",
        "lenet300-gnj-scratch"))
    assert len(ids) == 2 + 2 * 5 and len(set(ids)) == len(ids)
    runs = plan.by_id()
    assert runs["lenet300-svd/seed1"].pretrain == "lenet300-none/seed1"
    assert runs["lenet300-gnj-scratch/seed1"].pretrain is None
    assert runs["lenet300-gnj/seed0"].train["epochs"] == 3
    assert runs["lenet300-sws-sws_tau0.2/seed0"].train["sws_tau"] == 0.2
    assert runs["lenet300-none/seed0"].train["epochs"] == 2
    assert runs["lenet300-none/seed0"].block == 3          # the none block's configuration
    # the analyse stage's settings go to methods with a posterior only, seeded by the run
    assert runs["lenet300-gnj/seed1"].analyse["seed"] == 1
    assert runs["lenet300-sws-sws_tau0.1/seed0"].analyse == {}
    assert set(plan.only({"prior": ["svd"], "seed": [1]}).by_id()) == \
        {"lenet300-svd/seed1", "lenet300-none/seed1"}


@pytest.mark.parametrize("spec, needle", [
    ({"modle": "lenet300"}, "unknown key 'modle'"),
    ({"data_dir": "/data"}, "--data-dir"),
    ({"prior": "sws"}, "--init-from"),
    ({"epochs": "30"}, "epochs must be an int"),
    ({"max_weight_var": "fc1"}, "max_weight_var must be a float or a dict"),
    ({"prior": "gnj", "seed": []}, "gives no runs"),
    ({"grid": [{"prior": "gnj", "lr": 0.001}, {"prior": "gnj", "lr": 0.0010000001}]},
     "distinct labels"),        # both would be lenet300-gnj-lr0.001
    ({"select": {"budget": -1}}, "budget"),
])
def test_spec_errors_name_the_key(spec, needle):
    with pytest.raises(SpecError, match=needle):
        expand(spec)


def test_committed_fashion_mnist_spec_expands_to_the_study(capsys):
    plan = load_spec(ROOT / "studies" / "fashion-mnist.toml")
    seeds: dict[str, set] = {}
    priors = set()
    for r in plan.runs:
        seeds.setdefault(r.configuration, set()).add(r.seed)
        priors.add(r.train["prior"])
        assert r.train["data"] == "fashion-mnist" and r.train["val"] is None   # 5,000 held out
        if r.train["model"] == "lenet5-relu":   # the committed runs' bound, not today's default
            assert r.train["max_weight_var"] == {"fc1": 0.04}
    lenet300 = {c: s for c, s in seeds.items() if c.startswith("lenet300-")}
    lenet5 = {c: s for c, s in seeds.items() if c.startswith("lenet5-")}
    assert priors == {"none", "gnj", "ghs", "svd", "sws", "dc"}
    assert all(len(s) >= 3 for s in lenet300.values())
    assert all(len(s) >= 2 for s in lenet5.values())
    assert plan.select is not None          # settings are chosen, on the validation split
    assert cli.main(["sweep", str(ROOT / "studies" / "fashion-mnist.toml"), "--out",
                     "unused", "--list"]) == 0
    out = capsys.readouterr().out
    assert f"{len(plan.runs)} runs in {len(seeds)} configurations" in out
    assert not Path("unused").exists()


def test_committed_rounds_spec_is_the_readme_recipe():
    plan = load_spec(ROOT / "studies" / "lenet300-ghs-rounds.toml")
    assert [r.seed for r in plan.runs] == [0, 1, 2]
    for r in plan.runs:
        assert (r.train["model"], r.train["prior"], r.train["epochs"], r.train["lr"]) == \
            ("lenet300", "ghs", 200, 1e-3)
        assert r.train["max_weight_var"] == {"fc1": 0.01} and r.train["val"] is None
        assert (r.finetune, r.finetune_rounds, r.finetune_budget) == (10, 3, 1.0)
        assert r.prune_analyse["error_budget"] == 1.0 and r.analyse["error_budget"] == 0.5


def test_selection_reads_validation_error_never_test_error():
    # B is within 0.5 points of A on validation and compresses more: B is chosen, although
    # its test error is far worse; a tighter budget chooses A
    summary = pd.DataFrame({
        "configuration": ["A", "B", "plain"], "block": pd.array([0, 0, pd.NA], dtype="Int64"),
        "n_seeds": [3, 3, 3], "val_error_packed_mean": [0.100, 0.104, None],
        "val_error_last_epoch_mean": [0.09, 0.09, 0.08], "max_compression_mean": [20.0, 30.0, None],
        "error_packed_mean": [0.09, 0.30, None]})
    assert select(summary, {"budget": 0.5, "maximise": "max_compression"}) == [False, True, True]
    assert select(summary, {"budget": 0.2, "maximise": "max_compression"}) == [True, False, True]
    assert select(summary, None) == [True, True, True]


# --------------------------------------------------------------------- sweeps on local Ray
@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs for the module's sweeps."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("sweep") / "data", n_train=600,
                                   n_test=100)


TWO_BY_TWO = "\n".join(f"{k} = {json.dumps(v).lower() if isinstance(v, bool) else json.dumps(v)}"
                       for k, v in TINY.items()) + """
model = "lenet300"
prior = ["gnj", "svd"]
seed = [0, 1]
"""


@pytest.fixture(scope="module")
def two_by_two(ray_local, data, tmp_path_factory):
    """Two methods × two seeds, 1 epoch each, on local Ray: (sweep dir, result, lines)."""
    tmp = tmp_path_factory.mktemp("two-by-two")
    lines: list[str] = []
    result = run_sweep(load_spec(_spec(tmp, TWO_BY_TWO)), tmp / "out", engine="ray", jobs=2,
                       data_dir=str(data), say=_lines(lines))
    return tmp / "out", result, lines


def test_two_by_two_sweep_on_ray_summarises_each_configuration(two_by_two):
    root, result, lines = two_by_two
    assert result.engine == "ray" and not result.failed and len(result.done) == 4
    finished = [line for line in lines if " seed " in line]
    assert len(finished) == 4 and "[4/4 done · 0 running · 0 left]" in finished[-1]
    assert all(re.search(r"test error .* max compr\. [\d.]+×, \d+ s$", line)
               for line in finished), finished
    summary = pd.read_csv(root / "summary.csv")
    assert list(summary["configuration"]) == ["lenet300-gnj", "lenet300-svd"]
    for row in summary.itertuples():
        assert row.n_seeds == 2 and row.seeds == "0;1"
        dirs = row.run_dirs.split(";")
        assert dirs == [f"runs/{row.configuration}/seed0", f"runs/{row.configuration}/seed1"]
        comp = [json.loads((root / d / "compression.json").read_text()) for d in dirs]
        for key, values in (("error_packed", [c["error"]["packed"] for c in comp]),
                            ("val_error_full", [c["val_error"]["full"] for c in comp]),
                            ("max_compression", [c["rates"]["max_compression"] for c in comp]),
                            ("pruning", [c["rates"]["pruning"] for c in comp])):
            assert getattr(row, f"{key}_mean") == pytest.approx(statistics.mean(values),
                                                                rel=1e-12, abs=1e-15)
            assert getattr(row, f"{key}_sd") == pytest.approx(statistics.stdev(values),
                                                              rel=1e-9, abs=1e-15)
        # each seed is its own run: the seeds trained differently
        assert comp[0]["packed_bytes"] != comp[1]["packed_bytes"]
    layers = pd.read_csv(root / "summary_layers.csv")
    assert set(layers["layer"]) == {"fc1", "fc2", "fc3"} and (layers["n_seeds"] == 2).all()
    bench = pd.read_csv(root / "summary_bench.csv")
    assert {"dense", "pruned", "quantised"} <= set(bench["variant"])


def test_rerunning_a_finished_sweep_trains_nothing_and_rewrites_the_same_summary(two_by_two):
    root, _, _ = two_by_two
    files = sorted(root.glob("runs/*/*/*"))
    before = {p: p.stat().st_mtime_ns for p in files}
    summary = {n: (root / n).read_bytes() for n in ("summary.csv", "runs.csv",
                                                     "summary_layers.csv", "summary_bench.csv")}
    (root / "summary.csv").unlink()
    lines: list[str] = []
    spec = root.parent / "spec.toml"
    result = run_sweep(load_spec(spec), root, engine="ray", say=_lines(lines))
    assert result.engine is None and result.done == [] and len(result.skipped) == 4
    assert sum("finished before" in line for line in lines) == 4
    assert {p: p.stat().st_mtime_ns for p in sorted(root.glob("runs/*/*/*"))} == before
    for name, data in summary.items():
        assert (root / name).read_bytes() == data, name


def test_a_changed_setting_under_an_existing_run_is_refused(two_by_two):
    root, _, _ = two_by_two
    plan = load_spec(root.parent / "spec.toml", {"epochs": 2})
    with pytest.raises(SweepError, match="epochs was 1, now 2"):
        run_sweep(plan, root, engine="local", say=_lines([]))


def test_report_of_a_sweep_shows_mean_and_sd(two_by_two, tmp_path, capsys):
    root, _, _ = two_by_two
    assert cli.main(["report", str(root), "--out", str(tmp_path / "r.pdf")]) == 0
    assert "pages from 2 runs" in capsys.readouterr().out
    t2 = pd.read_csv(tmp_path / "r.table2.csv")
    summary = pd.read_csv(root / "summary.csv").set_index("configuration")
    runs = t2[t2["source"] == "run"].set_index("run")
    assert list(runs.index) == ["lenet300-gnj", "lenet300-svd"]
    for conf, row in runs.iterrows():
        assert row["n_seeds"] == 2
        for col in ("error_full", "error_packed", "pruning", "max_compression"):
            assert row[col] == summary.loc[conf, f"{col}_mean"]
            assert row[f"{col}_sd"] == summary.loc[conf, f"{col}_sd"]
    t1 = pd.read_csv(tmp_path / "r.table1.csv")
    layers = pd.read_csv(root / "summary_layers.csv").set_index(["configuration", "layer"])
    for row in t1[t1["source"] == "run"].itertuples():
        assert row.units_kept == layers.loc[(row.run, row.layer), "units_kept_mean"]
        assert row.units_kept_sd == layers.loc[(row.run, row.layer), "units_kept_sd"]


def test_report_of_a_sweep_and_a_single_run(two_by_two, tmp_path, capsys):
    """Run directories after the sweep's are single rows: their own numbers, no spread."""
    root, _, _ = two_by_two
    single = root / "runs" / "lenet300-svd" / "seed1"
    out = tmp_path / "r.pdf"
    assert cli.main(["report", str(root), str(single), "--out", str(out)]) == 0
    assert "pages from 3 runs" in capsys.readouterr().out
    t2 = pd.read_csv(tmp_path / "r.table2.csv")
    runs = t2[t2["source"] == "run"].set_index("run")
    assert list(runs.index) == ["lenet300-gnj", "lenet300-svd", "seed1"]
    own = json.loads((single / "compression.json").read_text())
    assert runs.loc["seed1", "pruning"] == pytest.approx(own["rates"]["pruning"], rel=1e-3)
    assert pd.isna(runs.loc["seed1", "n_seeds"]) and pd.isna(runs.loc["seed1", "pruning_sd"])
    assert runs.loc["lenet300-svd", "n_seeds"] == 2
    # Figure 1: the sweep's page (mean ± sd), then the single run's own bench
    pages = build_report([single], tmp_path / "again.pdf", sweep=read_summary(root)).pages
    assert pages[pages.index("figure1"):][:2] == ["figure1", "figure1 single runs"]


KILL = "\n".join(f"{k} = {json.dumps(v).lower() if isinstance(v, bool) else json.dumps(v)}"
                 for k, v in {**TINY, "epochs": 3, "subset": 600, "batch_size": 10}.items()) \
    + '\nmodel = "lenet300"\nprior = "gnj"\nseed = 0\n'
RUN = "lenet300-gnj/seed0"


def test_a_killed_worker_is_retried_and_the_sweep_ends_as_an_undisturbed_one(
        ray_local, data, tmp_path, monkeypatch):
    spec = _spec(tmp_path, KILL)
    killed = tmp_path / "kill"            # the same length as "calm": packed headers name it
    box: dict = {}

    def sweep():
        try:
            box["result"] = run_sweep(load_spec(spec), killed, engine="ray", retries=2,
                                      data_dir=str(data), say=_lines(box.setdefault("lines", [])))
        except BaseException as e:   # noqa: BLE001 - reported by the test below
            box["error"] = e

    thread = threading.Thread(target=sweep)
    thread.start()
    run_dir = killed / "runs" / RUN
    deadline = time.monotonic() + 300
    # kill the worker once the first epoch is checkpointed, while the second trains
    while not (run_dir / "checkpoint.pt").is_file():
        assert thread.is_alive() and time.monotonic() < deadline, box
        time.sleep(0.02)
    pid = attempts(killed, RUN)[0]["pid"]
    epochs = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(epochs) < 3, "the run finished its epochs before it could be killed"
    os.kill(pid, signal.SIGKILL)
    first_epoch = epochs[0]      # with its seconds: a retry from scratch would rewrite it
    thread.join(timeout=300)
    assert "error" not in box and not thread.is_alive(), box
    result = box["result"]
    assert result.done == [RUN] and not result.failed
    tries = attempts(killed, RUN)
    assert len(tries) == 2 and tries[0]["pid"] == pid != tries[1]["pid"]
    assert tries[1]["epochs_at_start"] >= 1            # resumed from the checkpoint:
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[0] == first_epoch
    assert any("lenet300-gnj seed 0: test error" in line and "attempt 2, resumed at epoch"
               in line for line in box["lines"]), box["lines"]

    # the same sweep, undisturbed, in this process (Ray hidden: the local engine says so)
    monkeypatch.setitem(sys.modules, "ray", None)
    calm_lines: list[str] = []
    calm = run_sweep(load_spec(spec), tmp_path / "calm", data_dir=str(data),
                     say=_lines(calm_lines))
    assert calm.engine == "local" and "Ray is not installed" in calm_lines[1]
    numbers = [c for c in pd.read_csv(killed / "runs.csv").columns
               if c not in ("train_seconds", "run_dir")]
    a = pd.read_csv(killed / "runs.csv")[numbers]
    b = pd.read_csv(tmp_path / "calm" / "runs.csv")[numbers]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    per_epoch = [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                 for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    calm_epochs = [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                   for line in (tmp_path / "calm" / "runs" / RUN / "metrics.jsonl")
                   .read_text().splitlines()]
    assert per_epoch == calm_epochs and len(per_epoch) == 3
    assert log_path(tmp_path / "calm", RUN).is_file()


# ------------------------------------------------------------------------- without Ray
def test_a_failing_run_is_reported_and_the_others_go_on(data, tmp_path):
    plan = expand({**TINY, "model": "lenet300", "pretrain_epochs": 1, "grid": [
        {"prior": "dc", "dc_keep": {"fc9": 0.5}}, {"prior": "svd"}]})
    lines: list[str] = []
    result = run_sweep(plan, tmp_path / "out", engine="local", data_dir=str(data),
                       say=_lines(lines))
    assert result.done == ["lenet300-none/seed0", "lenet300-svd/seed0"]
    assert list(result.failed) == ["lenet300-dc/seed0"]
    assert "fc9" in result.failed["lenet300-dc/seed0"]
    assert any("lenet300-dc seed 0: FAILED" in line and "1 failed" in line for line in lines)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index("configuration")
    assert summary.loc["lenet300-dc", "n_seeds"] == 0
    assert summary.loc["lenet300-svd", "n_seeds"] == 1


def test_engine_ray_without_ray_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    plan = expand({**TINY, "model": "lenet300", "prior": "gnj"})
    with pytest.raises(SweepError, match=r"pip install 'pbc\[sweep\]'"):
        run_sweep(plan, tmp_path / "out", engine="ray", say=_lines([]))
    assert not list((tmp_path / "out").glob("runs/*/*/checkpoint.pt"))


def test_a_second_sweep_on_the_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pbc.lock import locked\n"
         f"with locked({str(out)!r}, 'pbc sweep other'):\n"
         "    print('held', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        spec = _spec(tmp_path, 'model = "lenet300"\nprior = "gnj"\nepochs = 1\n')
        with pytest.raises(ArtefactError, match="pbc sweep other"):
            run_sweep(load_spec(spec), out, engine="local", say=_lines([]))
        assert cli.main(["sweep", str(spec), "--out", str(out), "--engine", "local"]) == 1
        one_line_error(capsys.readouterr().err, "in use by", "pbc sweep other")
        assert not (out / "sweep.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_run_recorded_before_budgeted_bits_reads_back_with_the_posteriors_bits():
    """``sweep.json`` written before the analyse stage had ``precision``: its runs were
    analysed with the posterior's bits, so that is what they read back with, and a rerun at
    today's default would change them (refused, naming the setting)."""

    run = expand({"data": "fashion-mnist", "grid": [
        {"model": "lenet300", "prior": "gnj", "epochs": 1}]}).by_id()["lenet300-gnj/seed0"]
    assert run.analyse["precision"] == "budget"
    old = json.loads(json.dumps(run.to_dict()))          # as sweep.json holds it
    del old["analyse"]["precision"]
    back = PlannedRun.from_dict(old)
    assert back.analyse["precision"] == "posterior"
    assert back.analyse != run.analyse
    assert PlannedRun.from_dict(run.to_dict()).analyse == run.analyse


def test_a_run_that_fine_tunes_is_read_from_its_fine_tuned_run(data, tmp_path, capsys):
    """``finetune_epochs``: the analysed run trains on without its pruned groups into
    ``seed<k>-finetuned``, which gives the summary's numbers; a rerun trains nothing; a prior
    without group scales is refused; a run recorded before the setting reads back as none."""
    with pytest.raises(SpecError, match="finetune_epochs"):
        expand({**TINY, "model": "lenet300", "prior": "svd", "finetune_epochs": 1})
    spec = {**TINY, "model": "lenet300", "prior": "gnj", "finetune_epochs": [0, 1]}
    plan = expand(spec)
    runs = plan.by_id()
    assert set(runs) == {"lenet300-gnj-finetune_epochs0/seed0",
                         "lenet300-gnj-finetune_epochs1/seed0"}
    tuning = runs["lenet300-gnj-finetune_epochs1/seed0"]
    assert tuning.result_path == "runs/lenet300-gnj-finetune_epochs1/seed0-finetuned"
    assert PlannedRun.from_dict(tuning.to_dict()) == tuning
    plain = runs["lenet300-gnj-finetune_epochs0/seed0"]
    assert "finetune" not in plain.settings() and plain.result_path == plain.path
    assert PlannedRun.from_dict(plain.to_dict()).finetune == 0   # as sweep.json held it before
    assert set(plan.only({"finetune_epochs": [1]}).by_id()) == {tuning.id}

    root = tmp_path / "out"
    result = run_sweep(plan.only({"finetune_epochs": [1]}), root, engine="local",
                       data_dir=str(data), say=_lines([]))
    assert result.done == [tuning.id] and not result.failed
    tuned = root / tuning.result_path
    config = json.loads((tuned / "config.json").read_text())["config"]
    assert config["finetune_from"] == str(root / tuning.path) and config["epochs"] == 1
    row = pd.read_csv(root / "runs.csv").iloc[0]
    comp = json.loads((tuned / "compression.json").read_text())
    assert row.run_dir == tuning.result_path
    assert row.error_packed == comp["error"]["packed"]
    assert (tuned / "bench.json").is_file() and (root / tuning.path / "analysis.json").is_file()
    seconds = [json.loads(line)["seconds"] for d in (tuned, root / tuning.path)
               for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert row.train_seconds > sum(seconds)     # both runs' epochs, and their evaluations
    again = run_sweep(plan.only({"finetune_epochs": [1]}), root, engine="local",
                      say=_lines([]))
    assert again.done == [] and again.skipped == [tuning.id]
    assert cli.main(["sweep", str(_spec(tmp_path, 'model = "lenet300"\nprior = "ghs"\n'
                                        'epochs = 3\nfinetune_epochs = 2\n')),
                     "--out", "unused", "--list"]) == 0
    assert "lenet300-ghs/seed0: lenet300 ghs, from scratch, 3 epochs + 2 fine-tuning" in \
        capsys.readouterr().out


def test_rounds_of_fine_tuning_prune_at_their_budget_and_the_last_gives_the_numbers(
        data, tmp_path, capsys):
    """``finetune_rounds = 2``, ``finetune_budget = 1``: the run and its first fine-tuned run
    are analysed at 1 point, each round starts from the one before, the last is analysed at
    the run's own budget and gives the summary's row; a run of one round records neither
    setting; the settings are refused without ``finetune_epochs`` or out of range."""
    for bad in ({"finetune_rounds": 2}, {"finetune_budget": 1.0},
                {"finetune_epochs": 1, "finetune_rounds": 0},
                {"finetune_epochs": 1, "finetune_budget": -1.0}):
        with pytest.raises(SpecError, match="finetune_rounds"):
            expand({**TINY, "model": "lenet300", "prior": "gnj", **bad})
    one = expand({**TINY, "model": "lenet300", "prior": "gnj", "finetune_epochs": 1}).runs[0]
    assert one.settings()["finetune"] == 1 and "finetune_rounds" not in one.settings()
    plan = expand({**TINY, "model": "lenet300", "prior": "gnj", "finetune_epochs": 1,
                   "finetune_rounds": 2, "finetune_budget": 1})
    (run,) = plan.runs
    assert run.tuned_paths == [f"{run.path}-finetuned", f"{run.path}-finetuned2"]
    assert run.result_path == run.tuned_paths[-1]
    assert PlannedRun.from_dict(run.to_dict()) == run
    assert plan.only({"finetune_rounds": [2]}).runs == [run]

    root = tmp_path / "out"
    result = run_sweep(plan, root, engine="local", data_dir=str(data), say=_lines([]))
    assert result.done == [run.id] and not result.failed
    chain = [root / p for p in (run.path, *run.tuned_paths)]
    for source, tuned in itertools.pairwise(chain):
        config = json.loads((tuned / "config.json").read_text())["config"]
        assert config["finetune_from"] == str(source)
    budgets = [json.loads((d / "analysis.json").read_text())["selection"]["error_budget_points"]
               for d in chain]
    assert budgets == [1.0, 1.0, 0.5]
    row = pd.read_csv(root / "runs.csv").iloc[0]
    assert row.run_dir == run.result_path
    assert row.error_packed == json.loads((chain[-1] / "compression.json").read_text()
                                          )["error"]["packed"]
    seconds = [json.loads(line)["seconds"] for d in chain
               for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert len(seconds) == 3 and row.train_seconds > sum(seconds)
    assert cli.main(["sweep", str(_spec(tmp_path, 'model = "lenet300"\nprior = "ghs"\n'
                                        'epochs = 3\nfinetune_epochs = 2\n'
                                        'finetune_rounds = 3\n')),
                     "--out", "unused", "--list"]) == 0
    assert "3 epochs + 3 × 2 fine-tuning" in capsys.readouterr().out
