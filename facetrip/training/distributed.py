"""Training on several processes (GPUs, machines) with ``torch.distributed``, as launched by
``torchrun`` (which Slurm and Kubernetes jobs run).

:class:`DistContext` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)
and sets up the process group: NCCL on CUDA, gloo on CPU, with a timeout on every collective
so that a rank that died ends the job instead of hanging it. :class:`GlobalTripletLoss` mines
every rank's anchors against the whole global batch: embeddings and labels are all-gathered
(:class:`AllGather`, whose backward returns to each rank the gradient of *every* rank's loss
with respect to its rows), and each rank's loss is weighted by its share of the global terms,
so that DistributedDataParallel's averaged gradient is exactly the gradient of the
single-process loss on the same global batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from facetrip.errors import UserError
from facetrip.loss import TripletLoss
from facetrip.loss.memory import CrossBatchMemory


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job. ``world_size == 1``: not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, validates and writes the run directory."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        """torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; a single process without them."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise UserError("RANK / WORLD_SIZE / LOCAL_RANK must be integers") from None
        return cls(rank, world, local)

    def device(self, name: str) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` when training on CUDA, else ``name``."""
        device = torch.device(name)
        if self.distributed and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def init(self, device: torch.device, timeout_s: float) -> None:
        """Join the process group (a no-op for a single process)."""
        if not self.distributed or dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def all_agree(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. a stop request)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather_objects(self, obj: object) -> list[object]:
        """``obj`` of every rank, in rank order (one rank: ``[obj]``)."""
        if not self.distributed:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


class AllGather(torch.autograd.Function):
    """All-gather equal-sized ``(B, ...)`` tensors into ``(W B, ...)`` in rank order.

    Backward: the gradient of the gathered tensor is summed over the ranks (each rank's loss
    contributes to every row) and each rank receives its own rows' slice. An all-reduce of the
    whole gradient, so it works on gloo as well as NCCL.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_labels(labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` labels of every rank, ``(W B,)`` in rank order (no gradient)."""
    parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


class GlobalTripletLoss(nn.Module):
    """``loss.scope: global``: each rank's anchors mined against the all-gathered global batch.

    ``forward(embeddings (B, D), labels (B,)) -> (loss, stats)`` on every rank. The returned
    loss has the *value* of the single-process loss on the global batch (``sum_k (n_k / N)
    L_k``, all-reduced, so every rank logs the same number and agrees on a non-finite step)
    and the *gradient* of ``W (n_k / N) L_k``: through :class:`AllGather` and DDP's averaging
    over ``W`` ranks, the parameter gradient is the single-process gradient (see
    :mod:`facetrip.loss.triplet`, "Distributed training"). ``stats`` are this rank's, with
    ``n_triplets``, ``n_candidates`` and ``active_fraction`` those of the global batch (so an
    adaptive margin moves alike on every rank). All ranks must hold batches of the same size.
    """

    def __init__(self, loss: TripletLoss, memory: CrossBatchMemory | None = None) -> None:
        super().__init__()
        self.loss, self.memory = loss, memory

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        world, rank = dist.get_world_size(), dist.get_rank()
        labels = labels.to(embeddings.device)
        gathered = AllGather.apply(embeddings)
        gathered_labels = all_gather_labels(labels)
        refs, ref_labels, used = gathered, gathered_labels, 0
        if self.memory is not None:  # every rank holds the same (global batches)
            refs, ref_labels, used = self.memory.references(gathered, gathered_labels)
        local, stats = self.loss(embeddings, labels, ref_embeddings=refs,
                                 ref_labels=ref_labels,
                                 ref_self_index=rank * embeddings.shape[0])
        if self.memory is not None:
            self.memory.push(gathered, gathered_labels)
            stats = {**stats, "memory_size": float(used)}
        n_local = float(stats.get("n_triplets", 0.0))
        candidates = float(stats.get("n_candidates", 0.0))
        totals = torch.tensor([n_local, n_local * float(local.detach()), candidates,
                               round(candidates * float(stats.get("active_fraction", 0.0)))],
                              dtype=torch.float64, device=embeddings.device)
        dist.all_reduce(totals)
        n_global, weighted, all_candidates, active = (float(t) for t in totals)
        share = n_local / n_global if n_global > 0 else 0.0
        scaled = local * (world * share)
        value = weighted / n_global if n_global > 0 else 0.0
        stats = {**stats, "n_triplets": n_global, "n_candidates": all_candidates,
                 "active_fraction": active / all_candidates if all_candidates > 0 else 0.0}
        # the global value for logging and the non-finite check; the scaled gradient
        return scaled + (scaled.new_tensor(value) - scaled).detach(), stats


def _average_over_ranks(grad: torch.Tensor) -> torch.Tensor:
    """A gradient hook: this parameter's gradient averaged over the ranks (as DDP does for
    the network's)."""
    grad = grad.contiguous().clone()
    dist.all_reduce(grad)
    return grad / dist.get_world_size()


class GlobalClassifierLoss(nn.Module):
    """``loss.classifier`` with several processes: each rank's cross-entropy over its share
    of the global batch, the head's gradient averaged over the ranks (a hook on each of its
    parameters, as DDP averages the network's). With equal shares the mean of the ranks'
    means is the global batch's mean, so the step is the single-process step. The returned
    loss has the global *value* (all-reduced: every rank logs the same number and agrees on a
    non-finite step) and this rank's gradient; ``stats`` are the global ones."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        for param in classifier.parameters():
            param.register_hook(_average_over_ranks)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, float]]:
        local, stats = self.classifier(embeddings, labels)
        totals = torch.tensor([float(local.detach()), stats["cls_accuracy"]],
                              dtype=torch.float64, device=embeddings.device)
        dist.all_reduce(totals)
        value, accuracy = (float(v) / dist.get_world_size() for v in totals)
        return (local + (local.new_tensor(value) - local).detach(),
                {"cls_loss": value, "cls_accuracy": accuracy})
