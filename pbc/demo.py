"""The main job end to end on the default data (Fashion-MNIST), in minutes.

pretrain a plain LeNet-300-100 → train it under the group normal-Jeffreys prior from the
pretrained means → analyse the posterior (ArviZ) → fine-tune it without the groups the
analysis pruned, and analyse that → compress both (prune, quantise, pack) → time dense
against compressed forward passes on the CPU → a report PDF (tables beside the paper's,
figures, training curves).  Each stage writes its artefacts into the run directory, so any
stage can be rerun alone with the matching ``pbc`` command.  The run directories are named
for what they hold: ``OUT/lenet300-plain`` (the pretrained plain network),
``OUT/lenet300-gnj`` (the BC-GNJ run and its compressed network) and
``OUT/lenet300-gnj-finetuned`` (the fine-tuned run and its compressed network).
"""

from __future__ import annotations

from pathlib import Path

from pbc.analysis import analyse
from pbc.bench import bench
from pbc.compress import compress
from pbc.config import TrainConfig
from pbc.finetune import finetune_config
from pbc.reporting.pdf import build_report
from pbc.train import train

STAGES = 7
MODEL = "lenet300"
FINETUNE_EPOCHS = 2   # a few seconds here; `pbc finetune` runs 10 by default


def _stage(i: int, text: str) -> None:
    print(f"[{i}/{STAGES}] {text}", flush=True)


def run_demo(out: str = "runs/demo", data_dir: str | None = None, epochs: int = 5,
             pretrain_epochs: int = 2, threads: int | None = None) -> dict:
    """Run the pipeline; print one line per stage; return the compression record."""
    out = Path(out)
    common = {"model": MODEL, "data": "fashion-mnist", "data_dir": data_dir,
              "threads": threads}
    plain, run = out / f"{MODEL}-plain", out / f"{MODEL}-gnj"
    _stage(1, f"pretrain {MODEL} (plain, {pretrain_epochs} epochs) → {plain}")
    pre = train(TrainConfig(out=str(plain), prior="none", epochs=pretrain_epochs, **common))
    _stage(2, f"train {MODEL} under BC-GNJ ({epochs} epochs, from the pretrained means) "
              f"→ {run}")
    train(TrainConfig(out=str(run), prior="gnj", epochs=epochs, init_from=str(pre.out),
                      **common))
    _stage(3, f"analyse the posterior → {run / 'posterior.nc'}, layers.csv, figures/")
    _show_analysis(analyse(run, draws=400))
    tuned = out / f"{MODEL}-gnj-finetuned"
    _stage(4, f"fine-tune without the pruned groups ({FINETUNE_EPOCHS} epochs) → {tuned}, "
              f"and analyse it")
    train(finetune_config(run, str(tuned), FINETUNE_EPOCHS, threads=threads))
    _show_analysis(analyse(tuned, draws=400))
    _stage(5, f"compress both → {run / 'model.pbcz'}, {tuned / 'model.pbcz'}")
    first, rec = compress(run), compress(tuned)
    _stage(6, f"bench dense vs compressed (CPU, batch 2048) → {tuned / 'bench.json'}")
    bench(run, batch=2048, repeats=10, threads=threads)
    for v in bench(tuned, batch=2048, repeats=10, threads=threads)["variants"]:
        print(f"      {v['name']:>9}: {v['median_s'] * 1e3:7.2f} ms, speed-up "
              f"{v['speedup']:.2f}x (ideal {v['ideal_speedup']:.2f}x)")
    _stage(7, f"report → {out / 'report.pdf'} (+ CSV tables)")
    build_report([run, tuned, pre.out], out / "report.pdf")
    print(f"      BC-GNJ before fine-tuning: packed {first['error']['packed']:.4f}, fast "
          f"prediction {first['rates']['fast_prediction']:.1f}x")
    e, rates = rec["error"], rec["rates"]
    print(f"done: test error plain {pre.metrics[-1]['test_error']:.4f}; BC-GNJ fine-tuned full "
          f"{e['full']:.4f}, pruned {e['pruned']:.4f}, quantised and packed {e['packed']:.4f}; "
          f"pruning {rates['pruning']:.1f}x, fast prediction {rates['fast_prediction']:.1f}x, "
          f"max compression {rates['max_compression']:.1f}x ({rec['packed_bytes']} bytes)")
    return rec


def _show_analysis(result) -> None:
    for r in result.values():
        row = r.row
        print(f"      {row['layer']}: {row['groups_kept']}/{row['groups_total']} groups kept, "
              f"{row['bits']} bits")
