"""Every study script's ``--smoke`` run: the whole pipeline on generated data, into one run
directory, ending in its report PDF; and a second call continues instead of retraining.

The first study of each model pretrains its plain run; the others of that model reuse it
through ``--pretrained`` (the same 1-epoch smoke pretraining, done once per model)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from pbc.study import SMOKE_MODELS

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
    assert {"lenet5_svd", "lenet5_sws", "lenet5_dc", "vgg16_gnj", "vgg16_ghs", "resnet8_gnj",
            "resnet8_ghs"} <= names


@pytest.fixture(scope="session")
def pretrained() -> dict[str, Path]:
    """model → the plain run that the first smoke study of that model pretrained; later
    studies of the model start from it (``--pretrained``) instead of pretraining their own."""
    return {}


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_smoke(path, tmp_path, capsys, pretrained):
    module = _load(path)
    study = module.STUDY
    doc = module.__doc__
    assert "Claim:" in doc and f"python studies/{path.name}" in doc and "Paper" in doc
    out = tmp_path / study.name
    argv = ["--smoke", "--out", str(out), "--threads", "1", "--seed", "3"]
    if study.model in pretrained:
        argv += ["--pretrained", str(pretrained[study.model])]
    assert module.main(study, argv) == 0
    run = out / "run"
    for artefact in ("config.json", "metrics.jsonl", "compression.json", "bench.json",
                     "model.pbcz", "report.pdf"):
        assert (run / artefact).is_file(), artefact
    assert (run / "analysis.json").is_file() == (study.prior in ("gnj", "ghs", "svd"))
    if (run / "frontier.csv").is_file():       # the smoke run's frontier: the first budget
        assert study.prior in ("gnj", "ghs", "svd")
        frontier = pd.read_csv(run / "frontier.csv")
        assert frontier["budget_points"].tolist() == [study.budgets[0]]
    else:
        assert study.prior not in ("gnj", "ghs", "svd")
    config = json.loads((run / "config.json").read_text())["config"]
    smoke_model = SMOKE_MODELS.get(study.model, study.model)   # same structure, smaller
    assert (config["prior"], config["model"], config["seed"]) == (study.prior, smoke_model, 3)
    if study.model in pretrained:              # started from another study's plain run
        assert config["init_from"] == str(pretrained[study.model])
        assert not (out / "pretrain").exists()
    elif study.pretrain_epochs:                # this study pretrained its own plain run
        pre = json.loads((out / "pretrain" / "config.json").read_text())["config"]
        assert (pre["prior"], pre["model"]) == ("none", smoke_model)
        assert config["init_from"] == str(out / "pretrain")
        pretrained[study.model] = out / "pretrain"
    else:                                      # from scratch, as the study says
        assert config["init_from"] is None and not (out / "pretrain").exists()
    rec = json.loads((run / "compression.json").read_text())
    assert f"error full {rec['error']['full']:.4f}" in capsys.readouterr().out
    # a second call finds everything done and retrains nothing
    assert module.main(study, argv) == 0
    assert "already trained" in capsys.readouterr().out


def test_study_smoke_with_fine_tuning(tmp_path, capsys):
    """``--finetune-epochs``: the analysed run is fine-tuned into OUT/finetuned, which goes
    through the same later stages; the report holds both; a second call retrains nothing."""
    module = _load(Path(__file__).parent.parent / "studies" / "lenet300_ghs.py")
    out = tmp_path / "study"
    argv = ["--smoke", "--out", str(out), "--threads", "1", "--finetune-epochs", "3"]
    assert module.main(module.STUDY, argv) == 0
    printed = capsys.readouterr().out
    assert "[12/12] report" in printed
    tuned = out / "finetuned"
    for artefact in ("analysis.json", "compression.json", "frontier.csv", "bench.json"):
        assert (tuned / artefact).is_file(), artefact
    config = json.loads((tuned / "config.json").read_text())["config"]
    assert config["finetune_from"] == str(out / "run") and config["epochs"] == 1
    rec = json.loads((tuned / "compression.json").read_text())
    assert f"error full {rec['error']['full']:.4f}" in printed      # the study's last run
    table = pd.read_csv(out / "run" / "report.table2.csv")
    assert {"run", "finetuned"} <= set(table["run"])
    assert module.main(module.STUDY, argv) == 0
    assert capsys.readouterr().out.count("already trained") == 3   # plain, run, fine-tuned
