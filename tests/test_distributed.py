"""Where a run executes: device choice, the samplers, the stop flag, the one-process collectives."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from relpos.experiments.config_utils import ConfigError
from relpos.experiments.distributed import ResumableSampler, ShardSampler, _Dist, _StopFlag, resolve_device


def test_resumable_sampler_starts_mid_epoch_and_reshuffles():
    s = ResumableSampler(list(range(10)), seed=3)
    s.set_epoch(2)
    full = list(s)
    assert sorted(full) == list(range(10))
    s.set_start_index(4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_start_index(99)  # clamped
    assert list(s) == [] and len(s) == 0
    s.set_epoch(3)
    s.set_start_index(0)
    assert list(s) != full  # a new order every epoch
    # the order is torch's seeded permutation of seed + epoch, as DistributedSampler draws it
    g = torch.Generator().manual_seed(3 + 2)
    assert full == torch.randperm(10, generator=g).tolist()


def test_two_ranks_share_one_permutation():
    ranks = [ResumableSampler(list(range(10)), num_replicas=2, rank=r, seed=1) for r in range(2)]
    for s in ranks:
        s.set_epoch(0)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 5 and sorted(a + b) == list(range(10))


def test_shard_sampler_is_exact():
    shards = [list(ShardSampler(7, 3, r)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(ShardSampler(7, 3, r)) for r in range(3)] == [3, 2, 2]


def test_one_process_collectives_are_identity(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    dd = _Dist()
    dd.init("cpu")
    assert not dd.enabled and dd.is_main and (dd.world, dd.rank) == (1, 0)
    assert dd.sum([1.5, 2], torch.device("cpu")) == [1.5, 2]
    assert dd.any(True, torch.device("cpu")) and not dd.any(False, torch.device("cpu"))
    assert dd.broadcast_str("x") == "x"
    dd.close()


def test_weight_digest_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("RELPOS_TEST_WEIGHT_HASH_DIR", raising=False)
    model = torch.nn.Linear(2, 2)
    _Dist().write_weight_digest(model)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("RELPOS_TEST_WEIGHT_HASH_DIR", str(tmp_path / "h"))
    _Dist().write_weight_digest(model)
    digest = (tmp_path / "h" / "weights-rank0.sha256").read_text()
    assert len(digest) == 64


def test_stop_flag_first_signal_sets_second_sigint_raises():
    flag = _StopFlag()
    flag.install()
    try:
        assert not flag() and flag.reason == "stop requested"
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag() and flag.signum == signal.SIGTERM and flag.reason == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGTERM) is not flag._handler


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="train.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda"):
            resolve_device("cuda")
