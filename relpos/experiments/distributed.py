"""Where a run executes: the device, the ranks under ``torchrun``, the samplers, the stop signals.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) :class:`_Dist` initializes the process group
(gloo on CPU, NCCL on CUDA) and offers the few collectives ``fit`` needs; with one process every
method is a no-op. Each rank takes its shard of the same seeded permutation
(:class:`ResumableSampler`), evaluation shards are exact (:class:`ShardSampler`), and the first
SIGTERM / SIGINT only raises a flag (:class:`_StopFlag`) so the step finishes and ``last.pt`` is saved.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from relpos.experiments.checkpoint import unwrap_model
from relpos.experiments.config_utils import ConfigError

__all__ = ["WEIGHT_HASH_ENV", "ResumableSampler", "ShardSampler", "rank_loaders", "resolve_device"]

#: Tests only: when set to a folder, every rank writes ``weights-rank<r>.sha256`` there at the end.
WEIGHT_HASH_ENV = "RELPOS_TEST_WEIGHT_HASH_DIR"


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; an unavailable explicit choice is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device = 'cuda' is not allowed: no CUDA device here; use auto or cpu")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ConfigError("train.device = 'mps' is not allowed: no MPS device here; use auto or cpu")
        return torch.device("mps")
    if name != "cpu":
        raise ConfigError(f"train.device = {name!r} is not allowed: one of auto, cpu, cuda, mps")
    return torch.device("cpu")


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (permutation seeded by ``seed + epoch``) that can start mid-epoch.

    With ``num_replicas=1`` it is a plain seeded shuffle; ``set_start_index(k)`` skips the first
    ``k`` indices of this rank's share (so a resumed epoch continues where the saved one stopped).
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start_index = 0

    def set_start_index(self, start_index: int) -> None:
        self.start_index = max(0, min(int(start_index), self.num_samples))

    def __iter__(self):
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` in order, without padding (exact sums for evaluation)."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = range(rank, length, num_replicas)  # O(1) memory, whatever data.num_val

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def rank_loaders(
    train_ds: Dataset, val_ds: Dataset, *, batch_size: int, num_workers: int, seed: int,
    world: int = 1, rank: int = 0, device: torch.device | None = None,
) -> tuple[ResumableSampler, DataLoader, DataLoader]:
    """This rank's ``(train sampler, train loader, val loader)``.

    Training draws this rank's share of the permutation seeded by ``seed + epoch``; evaluation
    takes an exact shard. Each loader has its own generator (the global RNG only feeds dropout), and
    workers leave SIGTERM / SIGINT to the main process.
    """
    sampler = ResumableSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    pin = device is not None and device.type == "cuda"
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin}
    if num_workers > 0:
        kwargs["worker_init_fn"] = _ignore_stop_signals
    train_loader = DataLoader(
        train_ds, batch_size=batch_size, sampler=sampler,
        generator=torch.Generator().manual_seed(seed), **kwargs,
    )
    val_loader = DataLoader(
        val_ds, batch_size=batch_size, sampler=ShardSampler(len(val_ds), world, rank),
        generator=torch.Generator().manual_seed(seed), **kwargs,
    )
    return sampler, train_loader, val_loader


class _Dist:
    """Rank, world size and the collectives ``fit`` needs (no-ops with one process)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1 and "RANK" in os.environ
        self.owns_group = False

    def init(self, device_name: str) -> None:
        if not self.enabled or dist.is_initialized():
            return
        use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        self.owns_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_str(self, value: str | None) -> str | None:
        if not self.enabled:
            return value
        obj = [value]
        dist.broadcast_object_list(obj, src=0)
        return obj[0]

    def write_weight_digest(self, model: nn.Module) -> None:
        """Tests only (``WEIGHT_HASH_ENV`` set): this rank's SHA-256 of its weights, to compare ranks."""
        folder = os.environ.get(WEIGHT_HASH_ENV)
        if not folder:
            return
        h = hashlib.sha256()
        for key, value in sorted(unwrap_model(model).state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"weights-rank{self.rank}.sha256").write_text(h.hexdigest())

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op with one process)."""
        if self.enabled and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader worker init: leave SIGTERM/SIGINT to the main process, which stops cleanly.

    The app stops a run by signalling its whole process group; a worker that died of it would turn
    a clean cancel into a failed run.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _StopFlag:
    """Set by SIGTERM/SIGINT (the first one); a second SIGINT raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, _frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def reason(self) -> str:
        """``"SIGTERM"``, ``"SIGINT"`` or ``"stop requested"`` (``should_stop`` / another rank)."""
        return {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}.get(self.signum, "stop requested")

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
