"""torch.distributed for distillation and evaluation: process group, class shards, collectives, consistency checks.

A distilled set is sharded by class: rank ``r`` of ``W`` owns a contiguous block of classes and
renders, scores and back-propagates only their images (DM's and DC's losses are per class). What
couples classes (MTT's student trajectory over the whole set, DC's network training between outer
loops) gathers the images, and each rank keeps the gradient of its own images. Everything random
is drawn per class or per iteration from the run's seed, so a sharded run computes what one
process computes.

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``);
NCCL is used on GPUs (rank ``LOCAL_RANK`` of a node on GPU ``LOCAL_RANK``), gloo on CPUs. The device is
the ``device`` argument, else ``$LD3M_FAST_DIST_DEVICE`` (``cpu`` forces gloo on the CPU even where GPUs
are visible, e.g. for tests), else a GPU when one is visible. Collectives time out after
``LD3M_FAST_DIST_TIMEOUT`` seconds (default 600), so when a rank dies the others stop with an error
instead of waiting forever.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import DeviceError, IncompatibleRunError, InvalidArgumentError, MissingDependencyError

TIMEOUT_ENV = "LD3M_FAST_DIST_TIMEOUT"
DEVICE_ENV = "LD3M_FAST_DIST_DEVICE"


@dataclass(frozen=True)
class Group:
    """This process's place in the run: ``rank`` of ``world`` processes, on ``device``."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _rank_device(device) -> torch.device:
    """The device this rank works on: ``device``, else ``$LD3M_FAST_DIST_DEVICE``, else GPU ``LOCAL_RANK`` if visible.

    A GPU index (named, or taken from ``LOCAL_RANK``) must exist on this machine: a clear error, rather
    than CUDA's "invalid device ordinal", when more ranks than GPUs are launched on a node.
    """
    device = device if device is not None else (os.environ.get(DEVICE_ENV) or None)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"device={device!r} is not a device ({err}); use 'cpu' or 'cuda' "
                          f"(or set {DEVICE_ENV})") from None
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise DeviceError(f"device={device!r}: no CUDA GPU is visible here; use device='cpu' (gloo) or "
                          f"{DEVICE_ENV}=cpu")
    index = dev.index if dev.index is not None else int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"rank {os.environ.get('RANK', '?')} wants GPU {index} (LOCAL_RANK or device={device!r}) but "
                          f"this machine has {count} visible GPU(s): launch at most {count} processes per node "
                          f"(--nproc_per_node={count}), or run on the CPU with device='cpu' / {DEVICE_ENV}=cpu")
    return torch.device("cuda", index)


def init(device=None) -> Group:
    """Join (or create) the default process group from torchrun's environment; returns this rank's :class:`Group`.

    ``device`` (or ``$LD3M_FAST_DIST_DEVICE``) picks where this rank works: a CUDA device means NCCL,
    anything else gloo; unset, a GPU when one is visible (see the module docstring).
    """
    if not dist.is_available():
        raise MissingDependencyError("distributed=True needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise InvalidArgumentError(
                "distributed=True needs a launcher: run with `torchrun --nproc_per_node=K -m ld3m_fast "
                "distill ...` (or srun with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set)")
        dev = _rank_device(device)
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    elif device is None and dist.get_backend() == "nccl":
        dev = torch.device("cuda", torch.cuda.current_device())
    elif device is None:
        dev = torch.device("cpu")
    else:
        dev = torch.device(device)
    return Group(dist.get_rank(), dist.get_world_size(), dev)


def finish() -> None:
    """Leave the default process group at the end of a successful run: wait for every rank, then destroy it, so that
    no rank tears down its connections while another still uses them (gloo then aborts the process). After a
    failure, do not call it (a lost rank would keep the barrier waiting): just exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_classes(num_classes: int, group: Group) -> list[int]:
    """The contiguous block of classes rank ``group.rank`` owns (sizes differ by at most one)."""
    if group.world > num_classes:
        raise InvalidArgumentError(
            f"{group.world} ranks but only {num_classes} classes: the synthetic set is sharded by class, "
            f"so use at most {num_classes} processes (--nproc_per_node)")
    base, extra = divmod(num_classes, group.world)
    start = group.rank * base + min(group.rank, extra)
    return list(range(start, start + base + (group.rank < extra)))


class RankLost(RuntimeError):
    """A collective failed: another rank stopped, crashed or did not answer within the timeout."""


@contextlib.contextmanager
def _collective(group: Group, what: str):
    try:
        yield
    except RankLost:
        raise
    except RuntimeError as exc:
        timeout = os.environ.get(TIMEOUT_ENV, "600")
        raise RankLost(f"rank {group.rank} lost contact with the other ranks while {what}: another rank stopped or "
                       f"did not answer within {timeout} s ({TIMEOUT_ENV}); its log says why. Checkpoints already "
                       f"written are intact: relaunch the same command to continue. ({exc})") from exc


def _comm_device(group: Group) -> torch.device:
    return group.device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(value: float, group: Group) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device(group))
    with _collective(group, "summing a loss"):
        dist.all_reduce(t)
    return float(t)


def all_gather_rows(tensor: torch.Tensor, group: Group) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 in rank order (first dims may differ between ranks)."""
    dev = _comm_device(group)
    local = tensor.detach().to(dev).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(group.world)]
    with _collective(group, "gathering images"):
        dist.all_gather(sizes, torch.tensor([local.shape[0]], device=dev))
        sizes = [int(s) for s in sizes]
        padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=dev)
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(group.world)]
        dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(tensor.device)


def all_gather_objects(obj, group: Group) -> list:
    out = [None] * group.world
    with _collective(group, "exchanging settings"):
        dist.all_gather_object(out, obj)
    return out


def check_agreement(what: str, value: str, group: Group) -> None:
    """Raise on every rank unless all ranks hold the same ``value`` (e.g. the fingerprint of the config or the data)."""
    values = all_gather_objects(value, group)
    if len(set(values)) > 1:
        differing = [r for r, v in enumerate(values) if v != values[0]]
        raise IncompatibleRunError(f"ranks disagree on the {what}: ranks {differing} differ from rank 0; every rank "
                                   "must get the same settings and data (same command line, same dataset files)")
