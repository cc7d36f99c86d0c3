"""torchrun --nproc_per_node=2 on CPU (gloo): both ranks end with identical weights; rank 0 writes."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relpos.experiments.checkpoint import read_checkpoint
from relpos.experiments.rundir import read_metrics, read_status

ROOT = Path(__file__).resolve().parents[1]


def _digest(state: dict) -> str:
    # the same digest train.py writes under RELPOS_TEST_WEIGHT_HASH_DIR
    h = hashlib.sha256()
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_two_ranks_train_in_lockstep(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    run, hashes = tmp_path / "run", tmp_path / "hashes"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RELPOS_TEST_WEIGHT_HASH_DIR": str(hashes)}
    cmd = [
        torchrun, "--standalone", "--nproc_per_node=2", "-m", "relpos.experiments.train",
        "--config", str(ROOT / "configs" / "tiny.yaml"), "--run-dir", str(run),
        "--set", "train.epochs=1", "--set", "model.dropout=0.1",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    rank0 = (hashes / "weights-rank0.sha256").read_text()
    rank1 = (hashes / "weights-rank1.sha256").read_text()
    assert rank0 == rank1
    ck = read_checkpoint(run / "last.pt")
    assert _digest(ck["model"]) == rank0  # rank 0 saved exactly the weights both ranks hold
    status = read_status(run)
    assert status["state"] == "done" and status["world_size"] == 2
    # 128 samples over 2 ranks of batch 32: 2 steps per epoch; the epoch saw all 128 samples
    assert status["total_steps"] == 2
    (epoch,) = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    assert epoch["step"] == 2
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["best.pt", "config.yaml", "last.pt", "metrics.jsonl", "status.json", "train.log"]
    )
