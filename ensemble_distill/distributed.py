"""Data parallelism with PyTorch's own stack: `torchrun` starts the processes, `torch.distributed` connects them
(gloo for CPU tensors, nccl for CUDA ones), DDP averages the gradients.

    torchrun --nproc-per-node 2 -m ensemble_distill.cli -- train --config C --out RUN --member 0

Every rank builds the global batch one process would (batches come from (seed, epoch)), cuts it into
world size x accumulation steps consecutive pieces and takes its own (`my_pieces`). Each piece's loss is a mean
over its units (positions, or sentences for a per-sentence loss), so a piece is weighted by its share of the
global batch's units times the world size: DDP's mean over ranks of the summed weighted gradients is then the
gradient of the single-process mean, for uneven pieces and padding alike.

Rank 0 alone writes files; the other ranks wait for it (`barrier`, `on_main`). Without torchrun the world has
one process and every helper here is the plain single-process path.
"""

import atexit
import os
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import fields, is_dataclass, replace

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError


def init_from_env() -> bool:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); nothing for one process. On a GPU machine each rank takes GPU LOCAL_RANK as its
    "cuda" device, and the group runs CUDA collectives on nccl, CPU ones on gloo. Returns whether more than one
    process takes part."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_close)  # once, at exit: a process runs several commands (tests) in one group
    return world_size() > 1


def _close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes the files: rank 0, or the only process."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point (rank 0 has finished writing what the others read next)."""
    if world_size() > 1:
        dist.barrier()


def broadcast(value):
    """Rank 0's `value` (any picklable object) on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    if world_size() == 1:
        return [value]
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def on_main(fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) run by rank 0 alone; every rank returns its result once it is done. A UserError on rank
    0 is raised on every rank (the others name rank 0), so that no rank waits for one that has stopped."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    outcome = None
    if is_main():
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except UserError as error:
            broadcast(("error", str(error)))
            raise
    kind, value = broadcast(outcome)
    if kind == "error":
        raise UserError(f"rank 0: {value}")
    return value


@contextmanager
def main_first():
    """Rank 0 runs the block first (writing what it creates: a vocabulary trained on first use), then the other
    ranks run it, reading what rank 0 wrote."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


# ----------------------------------------------------------------------------------------------------------------
# Pieces of a global batch


def batch_rows(batch) -> int:
    """The number of rows (sentences, windows) of a batch: the first dimension of its first tensor or array."""
    for item in _items(batch):
        if isinstance(item, (torch.Tensor, np.ndarray)):
            return len(item)
    raise TypeError(f"batch_rows: no tensor or array in the batch ({type(batch).__name__})")


def rows_of(batch, start: int, stop: int):
    """Rows start..stop-1 of every tensor and array in `batch` (a tensor, array, dict, tuple, list or dataclass of
    them); anything else is kept as it is. An object with a rows(start, stop) method cuts itself (a translation
    batch also cuts its padding to the piece's longest sentence)."""
    if hasattr(batch, "rows"):
        return batch.rows(start, stop)
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return batch[start:stop]
    if isinstance(batch, dict):
        return {key: rows_of(value, start, stop) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(rows_of(value, start, stop) for value in batch)
    if is_dataclass(batch):
        return replace(batch, **{f.name: rows_of(getattr(batch, f.name), start, stop) for f in fields(batch)})
    return batch


def _items(batch):
    if isinstance(batch, dict):
        yield from (x for value in batch.values() for x in _items(value))
    elif isinstance(batch, (tuple, list)):
        yield from (x for value in batch for x in _items(value))
    elif is_dataclass(batch) and not isinstance(batch, type):
        yield from (x for f in fields(batch) for x in _items(getattr(batch, f.name)))
    else:
        yield batch


def my_pieces(batch, units: Callable[[object], int], accumulate: int = 1) -> list[tuple[object, float]]:
    """This rank's pieces of a global batch, with the weight of each piece's mean loss: the batch is cut into
    world size x `accumulate` consecutive, near-equal pieces of rows (the first `rows % n` one row longer), and
    rank r takes pieces r·accumulate .. (r+1)·accumulate - 1.

    A piece's weight is units(piece) / units(batch) x world size, where units(piece) counts what its loss is a mean
    over (positions; sentences for a per-sentence loss), so that the mean over ranks (DDP's) of the weighted
    losses summed over a rank's pieces is the mean loss of the whole batch. A batch with fewer rows than pieces
    gives some ranks an empty piece: it is replaced by the batch's first row at weight 0, so that every rank runs
    a forward and backward pass (DDP reduces the gradients of every rank). One piece (one process, no
    accumulation) is the batch itself at weight exactly 1.

    Raises:
        ValueError: `accumulate` is below 1, or the batch holds no units.
    """
    if accumulate < 1:
        raise ValueError(f"my_pieces: accumulate must be at least 1, got {accumulate}")
    n, world = world_size() * accumulate, world_size()
    if n == 1:
        return [(batch, 1.0)]
    bounds = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(batch_rows(batch)), n)])
    pieces = [rows_of(batch, bounds[i], bounds[i + 1]) for i in range(n)]
    counts = [units(piece) if bounds[i + 1] > bounds[i] else 0 for i, piece in enumerate(pieces)]
    total = sum(counts)
    if total <= 0:
        raise ValueError("my_pieces: the batch holds no units (positions or sentences) to average a loss over")
    mine = range(rank() * accumulate, (rank() + 1) * accumulate)
    return [(pieces[i], counts[i] / total * world) if counts[i] else (rows_of(batch, 0, 1), 0.0) for i in mine]


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over the ranks of a few numbers (float64, on the CPU: gloo)."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def rank_seed(seed: int, epoch: int) -> None:
    """Seed this rank's torch RNG (dropout) from (seed, epoch, rank): ranks draw different masks for their
    different rows, and a resumed run draws the same ones again."""
    torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank()]).generate_state(1)[0]))


class _LossOf(torch.nn.Module):
    """`loss_fn(model, batch)` as a module's forward, so that DDP sees the pass whatever model method the loss
    calls (a tagger's `emissions`, a Transformer's forward)."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def data_parallel(model: torch.nn.Module, loss_fn: Callable) -> Callable:
    """loss_fn(model, batch) as a callable of the batch whose backward passes DDP reduces across the ranks (the
    model stays the module that is optimised and saved); for one process, loss_fn itself. Its `no_sync()` is a
    context in which a backward pass accumulates gradients without reducing them (accumulation steps)."""
    if world_size() == 1:
        def step(batch):
            return loss_fn(model, batch)
        step.no_sync = nullcontext
        return step
    device = next(model.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(_LossOf(model, loss_fn),
                                                     device_ids=[device] if device.type == "cuda" else None)
