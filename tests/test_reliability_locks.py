"""One writer per run directory: concurrent writers, a refused writer's message, stale locks
of killed processes (real processes: a lock is only a lock between processes)."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest
import torch
from conftest import make_idx_dataset, one_line_error, tiny_train_args

import pbc
from pbc.cli import main
from pbc.lock import LOCK_FILE, Locked, locked

REPO = pathlib.Path(pbc.__file__).parent.parent
HOLD = """
import sys, time
from pbc.lock import locked
with locked(sys.argv[1], "pbc test-holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def _code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def holder():
    """Start a process that holds a directory's lock; yields a function that starts it and
    returns the process (killed with SIGKILL at the end)."""
    procs = []

    def start(directory) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


@pytest.mark.parametrize("command", ["resume", "analyse", "compress", "bench"])
def test_a_second_writer_is_refused_naming_the_holder(trained_runs, tiny_data, tmp_path,
                                                      capsys, cpu_threads, holder, command):
    stage = {"compress": "analysed", "bench": "compressed"}.get(command, "trained")
    run = trained_runs.copy(tmp_path / "run", stage=stage)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    proc = holder(run)
    argv = {"resume": tiny_train_args(tiny_data, run, "--resume"),
            "analyse": ["analyse", str(run), "--no-figures"],
            "compress": ["compress", str(run)],
            "bench": ["bench", str(run), "--batch", "16", "--repeats", "1", "--warmup", "0"]
            }[command]
    assert _code(argv) == 1
    one_line_error(capsys.readouterr().err, str(run), f"in use by pid {proc.pid}",
                   "pbc test-holder")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after.pop(LOCK_FILE) and after == before       # the holder's lock, and nothing new


def test_a_lock_left_by_a_killed_process_is_taken_over(trained_runs, tmp_path, holder):
    run = trained_runs.copy(tmp_path / "run", stage="analysed")
    proc = holder(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    info = json.loads((run / LOCK_FILE).read_text())
    assert info["pid"] == proc.pid                      # the stale file is still there
    assert main(["compress", str(run)]) == 0
    assert not (run / LOCK_FILE).exists()              # released with the last writer


def test_two_concurrent_trains_leave_one_complete_run_and_one_refusal(tmp_path):
    """Both start at once; whichever takes the lock trains (long enough for the other to
    arrive), the other is refused, and the run directory holds the winner's run only."""
    data = make_idx_dataset(tmp_path / "data", n_train=1100, n_test=100)
    out = tmp_path / "R"
    runs = {}
    for seed, epochs in ((1, 1), (2, 1)):       # about 100 steps: seconds of training
        args = tiny_train_args(data, out, "--seed", str(seed), "--epochs", str(epochs),
                               "--subset", "1100", "--batch-size", "10")
        runs[seed] = subprocess.Popen([sys.executable, "-m", "pbc.cli", *args], cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
    results = {seed: (p.wait(timeout=300), p.stderr.read()) for seed, p in runs.items()}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 1], results
    winner = next(seed for seed, (code, _) in results.items() if code == 0)
    loser = next(seed for seed in results if seed != winner)
    one_line_error(results[loser][1], str(out), "in use by pid", "pbc train")
    saved = json.loads((out / "config.json").read_text())["config"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert saved["seed"] == winner
    assert len(metrics) == ckpt["epoch"] == saved["epochs"] == 1
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "metrics.jsonl"]


def test_a_writer_refused_before_the_holder_has_written_its_name_waits_for_it(tmp_path):
    """The holder takes the lock, then writes who it is: a writer refused in between reads
    the file again until the name is there, instead of naming "another process"."""
    path = tmp_path / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # held, file still empty
        writer = threading.Timer(0.2, os.pwrite, (fd, json.dumps(
            {"pid": 4242, "command": "pbc train", "started": "now"}).encode(), 0))
        writer.start()
        with pytest.raises(Locked, match="in use by pid 4242 \\(pbc train, started now\\)"):
            with locked(tmp_path, "pbc compress"):
                pass
        writer.join()
    finally:
        os.close(fd)
