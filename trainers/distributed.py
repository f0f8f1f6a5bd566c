"""Data-parallel learner ranks: one policy trained by N processes that average their gradients.

Each rank leases its share of a step's groups and builds its own batch; `average_gradients` (the
`Trainer`'s grad hook) sums the gradients of all ranks with one gloo all-reduce over a flat buffer
and divides by the world size, so every rank applies the same update to the same weights. The
learner loop also uses the group to agree on stopping (`any`), to gather the batch statistics on
rank 0 (`gather`) and to start every rank from rank 0's checkpoint (`broadcast`). `Solo` is the
one-rank stand-in with the same methods and no torch.distributed at all.

Collectives block until every rank calls them, so each rank must call the same ones in the same
order; a rank that dies makes the others' next collective fail (its connection closes, or the
group's timeout expires), and they exit non-zero. torch is imported lazily.
"""

from __future__ import annotations

import datetime
from typing import Any

import structlog

log = structlog.get_logger("trainers.distributed")

__all__ = ["Group", "Solo", "parse_address"]


def parse_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port), or a clear error."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"rendezvous address {address!r} is not HOST:PORT with a port 1..65535")
    return host, int(port)


class Solo:
    """One rank: every collective is the identity."""

    rank = 0
    world = 1
    grad_hook = None  # the Trainer keeps its no-signal shortcut

    def any(self, flag: bool) -> bool:
        return flag

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast(self, obj: Any) -> Any:
        return obj

    def broadcast_parameters(self, model: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Group:
    """This process's rank in a gloo process group (CPU), joined through a TCP rendezvous that
    rank 0 binds at `address`."""

    def __init__(self, rank: int, world: int, address: str, *, timeout_s: float = 300.0) -> None:
        import torch.distributed as dist

        if world < 2 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world {world}: need world >= 2 and 0 <= rank < world")
        host, port = parse_address(address)
        self.rank = rank
        self.world = world
        self._dist = dist
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://{host}:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        log.info("process group joined", rank=rank, world=world, address=address)

    @property
    def grad_hook(self) -> Any:
        return self.average_gradients

    def average_gradients(self, model: Any) -> None:
        """The mean of every rank's gradients, in place: one all-reduce of one flat buffer."""
        import torch

        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._dist.all_reduce(flat, op=self._dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank."""
        import torch

        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        self._dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (the others pass anything)."""
        box = [obj]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_parameters(self, model: Any) -> None:
        """Rank 0's weights on every rank."""
        import torch

        with torch.no_grad():
            for p in model.parameters():
                self._dist.broadcast(p.data, src=0)

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()
