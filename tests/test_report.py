"""``pbc report``: the comparison PDF and its CSV tables, built from copies of real run artefacts.

The run directories are copies of ``reports/fashion-mnist/*`` (real ``config.json``,
``metrics.jsonl``, ``layers.csv``, ``analysis.json``, ``compression.json``, ``bench.json``,
figures); nothing is trained.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pbc.cli import main
from pbc.io import sha256_file
from pbc.reporting import paper, tables
from pbc.reporting.pdf import build_report

REAL = Path(__file__).resolve().parents[1] / "reports" / "fashion-mnist"
RUNS = ("lenet300-gnj-200", "lenet5-ghs", "lenet5-none")

pytestmark = pytest.mark.skipif(not all((REAL / r / "config.json").is_file() for r in RUNS),
                                reason="reports/fashion-mnist run artefacts not present")


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    out = []
    for name in RUNS:
        shutil.copytree(REAL / name, tmp_path / "runs" / name)
        out.append(tmp_path / "runs" / name)
    return out


def _pdf_pages(path: Path) -> int:
    data = path.read_bytes()
    assert data.startswith(b"%PDF")
    return len(re.findall(rb"/Type\s*/Page(?![A-Za-z])", data))


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def _json(path: Path):
    return json.loads(path.read_text())


def test_pdf_builds_with_expected_pages(runs, tmp_path):
    r = build_report(runs, tmp_path / "out" / "cmp.pdf")
    # title, Table 1, Table 2, Figure 1, diagnostics (gnj: 2 wide + 3 forest plots → 2 pages;
    # ghs: 3 wide + 4 forest plots → 2; none: 0), curves, calibration (lenet5-ghs alone has a
    # predictive.json), MDL
    assert r.pages == ["title", "table1", "table2", "figure1",
                       "diagnostics lenet300-gnj-200 (1/2)", "diagnostics lenet300-gnj-200 (2/2)",
                       "diagnostics lenet5-ghs (1/2)", "diagnostics lenet5-ghs (2/2)",
                       "curves", "calibration", "mdl"]
    assert _pdf_pages(r.pdf) == len(r.pages) == 11
    assert sorted(p.name for p in r.csv.values()) == ["cmp.mdl.csv", "cmp.table1.csv",
                                                      "cmp.table2.csv"]


def test_csv_numbers_equal_the_artefacts(runs, tmp_path):
    r = build_report(runs, tmp_path / "cmp.pdf")
    t1, t2, mdl = _csv(r.csv["table1"]), _csv(r.csv["table2"]), _csv(r.csv["mdl"])
    for run in runs[:2]:
        comp = _json(run / "compression.json")
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        row = t2[(t2.source == "run") & (t2.run == run.name)].iloc[0]
        for key in ("pruning", "fast_prediction", "max_compression"):
            assert row[key] == comp["rates"][key]
        nonzero = sum(x["weights_nonzero"] for x in comp["layers"])
        for key, value in comp["error"].items():
            assert row[f"error_{key}"] == value
        assert row["packed_bytes"] == comp["packed_bytes"]
        assert row["test_error_last_epoch"] == metrics[-1]["test_error"]
        assert row["weights_total"] == sum(x["weights_total"] for x in comp["layers"])
        assert row["weights_kept"] == nonzero
        assert row["nonzero_pct"] == pytest.approx(100 * comp["rates"]["nonzero_fraction"])
        layers = t1[(t1.source == "run") & (t1.run == run.name)].set_index("layer")
        for x in comp["layers"]:
            kept = x["out_kept"] if x["kind"] == "conv" else x["in_kept"]
            assert layers.loc[x["name"], "units_kept"] == kept
            assert layers.loc[x["name"], "bits"] == x["bits"]
        per = mdl[mdl.run == run.name].set_index("layer")
        kl = pd.read_csv(run / "layers.csv").set_index("layer")["kl_bits"]
        for name, part in comp["size_parts"].items():
            assert per.loc[name, "packed_bytes"] == part["total_bytes"]
            assert per.loc[name, "packed_bits"] == 8 * part["total_bytes"]
            assert per.loc[name, "kl_bits"] == kl[name]       # the analyse stage's kl_bits
        assert per.loc["(run)", "kl_bits"] == metrics[-1]["kl_bits"]
        assert per.loc["(run)", "packed_bytes"] == comp["packed_bytes"]
    # Table 1: LeNet-300-100 in_kept, LeNet-5 conv out_kept / fc in_kept, as in the paper
    assert list(t1[t1.run == "lenet300-gnj-200"]["units_total"]) == [784, 300, 100]
    assert list(t1[t1.run == "lenet5-ghs"]["units_total"]) == [20, 50, 800, 500]
    # the paper's rows come from pbc.paper, unchanged
    bc = t2[(t2.source == "paper") & (t2.model == "lenet5") & (t2.method == "BC-GNJ")].iloc[0]
    assert (bc["pruning"], bc["fast_prediction"], bc["paper_error_pct"]) == (108, 361, 1.0)


def test_figure1_spreads_many_benched_runs_over_pages(runs, tmp_path, monkeypatch):
    from pbc.reporting import pdf
    monkeypatch.setattr(pdf, "BENCH_RUNS_PER_PAGE", 1)
    benched = [r for r in runs if (r / "bench.json").is_file()]
    assert len(benched) >= 2
    r = build_report(runs, tmp_path / "cmp.pdf")
    n = len(benched)
    assert [p for p in r.pages if p.startswith("figure1")] == [
        f"figure1 ({k}/{n})" for k in range(1, n + 1)]
    assert _pdf_pages(r.pdf) == len(r.pages)


def test_missing_artefacts_leave_empty_cells(runs, tmp_path):
    gnj, ghs, dense = runs
    for name in ("compression.json", "bench.json"):
        (gnj / name).unlink()
    shutil.rmtree(gnj / "figures")
    for name in ("compression.json", "layers.csv", "analysis.json", "bench.json"):
        (ghs / name).unlink()
    r = build_report(runs, tmp_path / "cmp.pdf")
    assert _pdf_pages(r.pdf) == len(r.pages)
    assert "figure1" in r.pages and "diagnostics lenet5-ghs (1/2)" in r.pages
    t1, t2, mdl = _csv(r.csv["table1"]), _csv(r.csv["table2"]), _csv(r.csv["mdl"])
    row = t2[t2.run == "lenet300-gnj-200"].iloc[0]
    assert pd.isna(row["pruning"]) and pd.isna(row["error_packed"])
    assert "no compression.json" in row["note"]
    # without compression.json, Table 1 falls back to the analyse stage's layers.csv
    layers = pd.read_csv(gnj / "layers.csv")
    g = t1[t1.run == "lenet300-gnj-200"]
    assert list(g["units_kept"]) == list(layers["in_kept"]) and set(g["artefact"]) == {
        "layers.csv"}
    h = t1[t1.run == "lenet5-ghs"]
    assert h["units_kept"].isna().all() and h["bits"].isna().all()
    assert h["note"].str.contains("no compression.json or layers.csv").all()
    d = t2[t2.run == "lenet5-none"].iloc[0]
    last = json.loads((dense / "metrics.jsonl").read_text().splitlines()[-1])
    assert pd.isna(d["error_full"]) and d["test_error_last_epoch"] == last["test_error"]
    assert mdl[mdl.run == "lenet5-none"]["packed_bytes"].isna().all()


def test_per_layer_kl_bits_used_when_layers_csv_has_them(runs, tmp_path):
    gnj = runs[0]
    layers = pd.read_csv(gnj / "layers.csv")
    layers["kl_bits"] = [1234.5, 67.25, 8.0]
    layers.to_csv(gnj / "layers.csv", index=False)
    analysis = json.loads((gnj / "analysis.json").read_text())   # as analyse records it
    analysis["sha256"]["layers.csv"] = sha256_file(gnj / "layers.csv")
    (gnj / "analysis.json").write_text(json.dumps(analysis))
    mdl = _csv(build_report(runs, tmp_path / "cmp.pdf").csv["mdl"])
    per = mdl[mdl.run == "lenet300-gnj-200"].set_index("layer")
    assert list(per.loc[["fc1", "fc2", "fc3"], "kl_bits"]) == [1234.5, 67.25, 8.0]
    assert set(per.loc[["fc1", "fc2", "fc3"], "kl_source"]) == {"layers.csv"}


def test_cli_report_returns_0(runs, tmp_path, capsys):
    out = tmp_path / "r" / "cmp.pdf"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    assert "11 pages from 3 runs" in capsys.readouterr().out
    assert out.is_file() and out.with_name("cmp.table2.csv").is_file()


def test_cli_report_errors(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for bad in ([str(tmp_path / "empty")], [str(tmp_path / "nowhere")]):
        with pytest.raises(SystemExit) as e:
            main(["report", str(runs[0]), *bad, "--out", str(tmp_path / "x.pdf")])
        assert e.value.code == 2
        assert "run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["report", str(runs[0]), "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2
    (runs[2] / "config.json").write_text("{not json")
    assert main(["report", str(runs[2]), "--out", str(tmp_path / "x.pdf")]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "x.pdf").exists()


def test_paper_rows_name_their_sources():
    for row in paper.ROWS:
        values = (row.architecture, row.bits, row.error_pct, row.nonzero_pct, row.pruning,
                  row.fast_prediction, row.max_compression)
        if any(v is not None for v in values):
            assert row.sources and set(row.sources) <= set(paper.SOURCES)
    gnj = next(r for r in paper.rows_for("lenet5") if r.method == "BC-GNJ")
    assert gnj.architecture == (8, 13, 88, 13) and gnj.max_compression == 573


def test_protocol_states_epochs_start_rate_threshold_rule_and_bits():
    """Each run row of Table 2 says how the run was made: epochs, start, rate and schedule,
    the weights' variance bound, threshold rule, bits chosen by the budget."""
    from pbc.reporting.tables import protocol
    from pbc.rundir import RunRecord

    def record(init_from=None, analysis=None):
        saved = {"config": {"epochs": 30, "init_from": init_from, "prior": "gnj",
                            "model": "lenet5", "val": 5000}}
        return RunRecord(Path("r"), "r", saved, analysis=analysis)

    budget = {"selection": {"rule": "budget", "error_budget_points": 0.5}}
    assert protocol(record(analysis=budget)) == \
        "30 ep. from scratch, error budget 0.5 pts (val.)"
    bounded = {"selection": {**budget["selection"], "val_changed_by_pruning": 40}}
    assert protocol(record(analysis=bounded)) == \
        "30 ep. from scratch, error budget 0.5 pts (val., upper bound)"
    assert protocol(record("plain", {"thresholds": {}})) == "30 ep. from a plain net, gap rule"
    assert protocol(record("plain", {"selection": {"rule": "budget", "given": ["fc1"]}})) \
        == "30 ep. from a plain net, thresholds given"
    assert protocol(record("plain")) == "30 ep. from a plain net"      # no analysis (sws, dc)
    legacy = RunRecord(Path("r"), "r", {"config": {"epochs": 20, "init_from": "plain",
                                                   "prior": "svd"}}, analysis={})
    assert protocol(legacy) == "20 ep. from a plain net, no validation split, sparse-vd rule"
    bits = record(analysis={"selection": {**bounded["selection"], "precision": "budget"}})
    assert protocol(bits) == "30 ep. from scratch, error budget 0.5 pts (val., upper bound), " \
        "bits by budget"
    rated = record(analysis=budget)
    rated.config.update(lr=0.005, lr_schedule="cooldown")
    assert protocol(rated) == "30 ep. from scratch, lr 0.005 cooldown, error budget 0.5 pts (val.)"
    rated.config.update(max_weight_var={"fc1": 0.01})
    assert protocol(rated) == "30 ep. from scratch, lr 0.005 cooldown, Var[w̃] ≤ fc1 0.01, " \
        "error budget 0.5 pts (val.)"
    rated.config.update(max_weight_var=0.04)
    assert "Var[w̃] ≤ 0.04," in protocol(rated)
    rated.config.update(max_weight_var={})       # BC-GHS from a plain net: no bound
    assert "Var" not in protocol(rated)


def test_a_sweep_row_prints_its_spread():
    from pbc.reporting.layout import DASH, num, pct, sd

    assert sd({"error": 0.1234, "error_sd": 0.0021}, "error", pct) == "12.34 ± 0.21"
    assert sd({"pruning": 35.5, "pruning_sd": None}, "pruning", num) == "35.5"
    assert sd({"pruning": None, "pruning_sd": 1.0}, "pruning", num) == DASH


def test_figure1_names_the_benches_that_paid_page_faults(runs, tmp_path, monkeypatch):
    from pbc.reporting import pdf
    seen = []
    real_notes = pdf.layout.notes

    def notes(fig, lines, **kw):
        seen.extend(lines)
        real_notes(fig, lines, **kw)

    monkeypatch.setattr(pdf.layout, "notes", notes)
    gnj, ghs, _ = runs
    record = _json(ghs / "bench.json")
    assert "flush_to_zero" in record and "allocator" not in record
    (ghs / "bench.json").write_text(json.dumps({**record, "allocator": "glibc malloc, …"}))
    build_report(runs, tmp_path / "cmp.pdf")
    faulting = [n for n in seen if n.startswith("bench.json from before freed memory")]
    assert len(faulting) == 1
    assert "lenet300-gnj-200" in faulting[0] and "lenet5-ghs" not in faulting[0]


def test_frontier_page_only_for_runs_with_a_frontier(runs, tmp_path):
    r = build_report(runs, tmp_path / "plain.pdf")
    assert "frontier" not in r.pages
    gnj = runs[0]
    pd.DataFrame({"budget_points": [0.5, 1.0], "test_error_packed": [0.108, 0.112],
                  "pruning": [3.6, 7.0], "fast_prediction": [13.0, 28.2]}).to_csv(
        gnj / "frontier.csv", index=False)
    r = build_report(runs, tmp_path / "cmp.pdf")
    assert r.pages[r.pages.index("figure1") + 1] == "frontier"
    assert r.pages.count("frontier") == 1   # one model has a frontier
    assert r.runs[0].frontier["pruning"].tolist() == [3.6, 7.0]
    assert _pdf_pages(r.pdf) == len(r.pages)


def test_budget_page_sets_each_budgets_test_cost_beside_its_validation_cost(runs, tmp_path):
    frontier = {"pruning": [3.6, 7.0], "fast_prediction": [13.0, 28.2],
                "budget_points": [0.5, 1.0], "val_error_unpruned": [0.0950, 0.0950],
                "test_error_full": [0.1000, 0.1000]}
    pd.DataFrame({**frontier, "val_error_packed": [0.0970, 0.1010],
                  "test_error_packed": [0.1040, 0.1120]}).to_csv(runs[0] / "frontier.csv",
                                                                 index=False)
    pd.DataFrame({**frontier, "val_error_packed": [0.0960, 0.1000],
                  "test_error_packed": [0.1060, 0.1070]}).to_csv(runs[1] / "frontier.csv",
                                                                 index=False)
    r = build_report(runs, tmp_path / "cmp.pdf")
    first = r.pages.index("frontier")     # one page per model: LeNet-300-100, LeNet-5
    assert r.pages[first:first + 3] == ["frontier", "frontier", "budgets"]
    assert _pdf_pages(r.pdf) == len(r.pages)
    costs = _csv(r.csv["budgets"])
    assert costs["run"].tolist() == ["lenet300-gnj-200"] * 2 + ["lenet5-ghs"] * 2
    assert costs["val_cost"].round(6).tolist() == [0.2, 0.6, 0.1, 0.5]
    assert costs["test_cost"].round(6).tolist() == [0.4, 1.2, 0.6, 0.7]
    summary = tables.budget_summary(costs)
    assert summary["budget_points"].tolist() == [0.5, 1.0]
    assert summary["val_cost"].round(6).tolist() == [0.15, 0.55]
    assert summary["test_cost"].round(6).tolist() == [0.5, 0.95]
    assert summary["test_cost_max"].round(6).tolist() == [0.6, 1.2]
    assert summary["over_budget"].tolist() == [1, 1]      # 0.6 > 0.5; 1.2 > 1.0
