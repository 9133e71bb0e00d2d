"""The main job end to end on the default data (Fashion-MNIST), in minutes.

Stages run so far: pretrain a plain LeNet-300-100 → train it under the group normal-Jeffreys
prior starting from the pretrained means.  Each stage writes its artefacts into its own run
directory under ``out``; later stages (analyse, compress, bench, report) join as they land.
"""

from __future__ import annotations

from pathlib import Path

from pbc.train import TrainConfig, train


def run_demo(out: str = "runs/demo", data_dir: str | None = None, epochs: int = 5,
             pretrain_epochs: int = 2, threads: int | None = None) -> dict:
    """Run the pipeline; print one line per stage; return the final metrics records."""
    out = Path(out)
    common = {"model": "lenet300", "data": "fashion-mnist", "data_dir": data_dir,
              "threads": threads}
    print(f"[1/2] pretrain lenet300 (plain, {pretrain_epochs} epochs) → {out / 'pretrain'}")
    pre = train(TrainConfig(out=str(out / "pretrain"), prior="none", epochs=pretrain_epochs,
                            **common))
    print(f"[2/2] train lenet300 under BC-GNJ ({epochs} epochs, from the pretrained means) "
          f"→ {out / 'gnj'}")
    bc = train(TrainConfig(out=str(out / "gnj"), prior="gnj", epochs=epochs,
                           init_from=str(pre.out), **common))
    summary = {"pretrain": pre.metrics[-1], "gnj": bc.metrics[-1]}
    print(f"done: plain test error {summary['pretrain']['test_error']:.4f}, "
          f"BC-GNJ test error {summary['gnj']['test_error']:.4f} (posterior-mean weights)")
    return summary
