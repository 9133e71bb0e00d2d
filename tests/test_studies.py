"""Every study script's ``--smoke`` run: the whole pipeline on generated data, into one run
directory, ending in its report PDF; and a second call continues instead of retraining."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.py"))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_is_a_study_per_method_and_model():
    names = {p.stem for p in STUDIES}
    for model in ("lenet300", "lenet5"):
        assert {f"{model}_gnj", f"{model}_ghs"} <= names
    assert {"lenet5_svd", "lenet5_sws", "lenet5_dc", "vgg16_gnj", "vgg16_ghs"} <= names


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_smoke(path, tmp_path, capsys):
    module = _load(path)
    study = module.STUDY
    doc = module.__doc__
    assert "Claim:" in doc and f"python studies/{path.name}" in doc and "Paper" in doc
    out = tmp_path / study.name
    assert module.main(study, ["--smoke", "--out", str(out), "--threads", "1"]) == 0
    run = out / "run"
    for artefact in ("config.json", "metrics.jsonl", "compression.json", "bench.json",
                     "model.pbcz", "report.pdf"):
        assert (run / artefact).is_file(), artefact
    assert (run / "analysis.json").is_file() == (study.prior in ("gnj", "ghs", "svd"))
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["prior"], config["model"]) == (study.prior, study.model)
    rec = json.loads((run / "compression.json").read_text())
    assert f"error full {rec['error']['full']:.4f}" in capsys.readouterr().out
    # a second call finds everything done and retrains nothing
    assert module.main(study, ["--smoke", "--out", str(out), "--threads", "1"]) == 0
    assert "already trained" in capsys.readouterr().out
