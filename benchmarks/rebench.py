"""Regenerate the ``bench.json`` of committed runs with the current benchmark.

A committed run directory (``reports/<data>/<run>/``) keeps the summary artefacts only; its
``bench.json`` names the run directory it was measured in (``"run"``), which holds the
networks.  For each committed ``bench.json`` this script runs ``pbc bench SOURCE`` in a fresh
process (so that flush-to-zero reaches every intra-op thread, see ``pbc.bench``), then copies
the new ``bench.json`` and ``figures/bench.png`` over the committed ones; every other file of
the committed run is left as it is.  A run whose source directory (or its compressed
networks) is absent is reported and left unchanged.

    python benchmarks/rebench.py                         # every run under reports/fashion-mnist
    python benchmarks/rebench.py --runs lenet5-gnj lenet5-ghs --repeats 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reports", default="reports/fashion-mnist",
                    help="directory of committed run directories")
    ap.add_argument("--runs", nargs="*", help="names of committed runs (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (recorded)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    reports = Path(args.reports)
    targets = sorted(p.parent for p in reports.glob("*/bench.json"))
    if args.runs:
        targets = [t for t in targets if t.name in args.runs]
    missing = []
    for target in targets:
        source = Path(json.loads((target / "bench.json").read_text())["run"])
        if not (source / "quantised.pt").is_file():
            print(f"{target.name}: source run {source} is not here; bench.json left as it was",
                  flush=True)
            missing.append(target.name)
            continue
        cmd = [sys.executable, "-m", "pbc.cli", "bench", str(source), "--batch",
               str(args.batch), "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--device", args.device]
        print(f"{target.name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True)
        shutil.copyfile(source / "bench.json", target / "bench.json")
        if (source / "figures" / "bench.png").is_file():
            (target / "figures").mkdir(exist_ok=True)
            shutil.copyfile(source / "figures" / "bench.png", target / "figures" / "bench.png")
    if missing:
        print(f"not regenerated (no source run): {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
