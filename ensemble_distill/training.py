"""One training loop for every model: optimiser, early stopping, atomic checkpoints, resume after a kill.

The loop is epoch-based. After each epoch it scores the model on held-out data (higher is better), keeps the
best weights in `best.pt`, and writes `checkpoint.pt` (weights, optimiser, RNG state, history) atomically: the
checkpoint marks the epoch done, so it is written after the weights it refers to, and `log.jsonl` is rewritten
from its history after it (one line per finished epoch, whatever was killed where). A run started again in the
same directory resumes after the last finished epoch; because batch order comes from (seed, epoch) and the torch
RNG state is restored, a resumed run ends with the same weights (the same bytes) as one that was never stopped.

A training whose loss (or weights) stop being finite is stopped at once (`Diverged`, one line naming the loss
and train.lr), and its files are removed: resumed, it would only continue weights the bad setting made, and a
folder with nothing trained in it takes a corrected config (io_utils.require_same_config).

Optional, for translation: a ready optimiser with a learning-rate scheduler stepped after every update (its state
is checkpointed too), and snapshots of the weights after each of the last few epochs (`epoch-<n>.pt`, written
before the checkpoint) for checkpoint averaging.

An update is one batch whatever runs it (distributed.py): under torchrun each rank takes its share of the batch
and DDP averages the gradients; `train.accumulate` = A runs a rank's share as A pieces one after another, summing
their gradients (less memory, the same update); `train.precision = "bf16"` runs the training forward passes under
bf16 autocast. Rank 0 alone scores the model, writes the files and shows progress; the others wait for it.
"""

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .config import Training
from .errors import UserError
from .io_utils import atomic_torch_save, atomic_write_text, load_torch, strict_json


def make_optimizer(params, cfg: Training) -> torch.optim.Optimizer:
    """The optimiser `cfg` names over the parameters that require gradients, their gradient norm clipped to
    `cfg.clip_norm` before every step (0: not clipped). Adafactor is transformers' with an explicit learning rate
    (relative_step=False): `cfg.scale_parameter` multiplies it by each parameter's RMS, max(1e-3, RMS(p)), as the
    paper's reference Adafactor (fairseq's) does, so that its "lr 1e-4" means what the paper meant; without it the
    step is the absolute lr."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        optimizer = Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay, scale_parameter=cfg.scale_parameter,
                              relative_step=False, warmup_init=False)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.clip_norm:
        def clip(*_):  # a hook before every step: whatever loop runs the optimiser clips, after any gradient averaging
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)

        optimizer.register_step_pre_hook(clip)
    return optimizer


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Training,
                   updates_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule `cfg.schedule` names, stepped after every update (None: constant). "linear":
    transformers' linear warm-up over warmup_ratio of max_epochs x updates_per_epoch updates, then linear decay
    to 0 at the last of them (the usual fine-tuning schedule, as Hugging Face's Trainer)."""
    if cfg.schedule == "constant":
        return None
    from transformers import get_linear_schedule_with_warmup

    total = cfg.max_epochs * updates_per_epoch
    return get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total), total)


def warm_restarts(optimizer: torch.optim.Optimizer, cycle_updates: int,
                  min_lr: float) -> torch.optim.lr_scheduler.CosineAnnealingWarmRestarts:
    """SGDR (Loshchilov & Hutter 2017; the paper's snapshot ensembles, §6.1 and its footnote 15: T_mult = 1):
    torch's CosineAnnealingWarmRestarts stepped after every update, so update u (from 0) of the training it
    schedules runs at min_lr + (lr - min_lr) (1 + cos(pi (u mod cycle_updates) / cycle_updates)) / 2, lr being
    the optimiser's initial rate: a cycle starts at lr, its last update runs just above min_lr, and the next
    update restarts at lr. The weights after a cycle's last update are its snapshot."""
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=cycle_updates, T_mult=1,
                                                                 eta_min=min_lr)


class StochasticWeightAveraging:
    """SWA (Izmailov et al. 2018; the paper's weight averaging, §5) with torch.optim.swa_utils, run by `train` as
    its scheduler (stepped after every update, checkpointed with the optimiser, so a resumed run averages exactly
    the epochs an unbroken one does).

    Until epoch `start` the rate follows `base` (None: constant); from its first update SWALR cosine-anneals it to
    `swa_lr` over `anneal_updates` updates and holds it there, and the weights after each epoch from `start` on
    are averaged (AveragedModel: their uniform running mean). An epoch is `updates_per_epoch` updates (NMT: a round).
    No update_bn afterwards: the models normalise with LayerNorm, which keeps no running statistics to recompute
    (update_bn only refreshes BatchNorm buffers). `apply(model)` puts the average in the model."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, updates_per_epoch: int, start: int,
                 swa_lr: float, anneal_updates: int, base: torch.optim.lr_scheduler.LRScheduler | None = None):
        self.optimizer, self.model, self.base = optimizer, model, base
        self.updates_per_epoch, self.start, self.swa_lr, self.anneal_updates = updates_per_epoch, start, swa_lr, \
            anneal_updates
        self.averaged = torch.optim.swa_utils.AveragedModel(model)
        self.swalr, self.updates = None, 0
        if start == 1:
            self._start_annealing()

    def step(self) -> None:
        self.updates += 1
        scheduler = self.swalr or self.base
        if scheduler is not None:
            scheduler.step()
        if self.swalr is not None and self.updates % self.updates_per_epoch == 0:
            self.averaged.update_parameters(self.model)
        if self.swalr is None and self.updates == (self.start - 1) * self.updates_per_epoch:
            self._start_annealing()  # sets the rate of the next update, epoch `start`'s first

    def _start_annealing(self) -> None:
        from torch.optim.swa_utils import SWALR

        self.swalr = SWALR(self.optimizer, swa_lr=self.swa_lr, anneal_epochs=self.anneal_updates,
                           anneal_strategy="cos")

    @property
    def epochs_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    def apply(self, model: torch.nn.Module) -> bool:
        """Put the averaged weights in `model`; False (the model left as it is) when no epoch was averaged yet."""
        if not self.epochs_averaged:
            return False
        model.load_state_dict(self.averaged.module.state_dict())
        return True

    def state_dict(self) -> dict:
        return {"updates": self.updates, "averaged": self.averaged.state_dict(),
                "base": self.base.state_dict() if self.base is not None else None,
                "swalr": self.swalr.state_dict() if self.swalr is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.averaged.load_state_dict(state["averaged"])
        if self.base is not None:
            self.base.load_state_dict(state["base"])
        if state["swalr"] is not None:
            if self.swalr is None:
                self._start_annealing()
            self.swalr.load_state_dict(state["swalr"])


class Diverged(UserError):
    """The training loss or the weights stopped being finite (a learning rate far too high, as a rule)."""


@dataclass
class TrainResult:
    best_score: float
    best_epoch: int
    epochs_run: int
    history: list[dict]


def train(model: torch.nn.Module, batches: Callable[[int], Iterable], loss_fn: Callable, score_fn: Callable,
          cfg: Training, run_dir, progress: bool = True, after_epoch: Callable[[int], None] | None = None,
          optimizer: torch.optim.Optimizer | None = None, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
          snapshots: int = 0, units: Callable[[object], int] | None = None) -> TrainResult:
    """Train `model` until `cfg.patience` epochs pass without a better `score_fn(model)`.

    batches(epoch) yields the epoch's batches (deterministic given the epoch); loss_fn(model, batch) returns
    (loss, n_tokens), the loss a mean over the batch. On return the model holds its best weights. `optimizer`
    defaults to make_optimizer(cfg); `scheduler`, if given, is stepped after every update. With `snapshots` = n
    the weights after each of the last n epochs are kept as epoch-<epoch>.pt. units(batch): what the loss of a
    batch is a mean over (its positions; its sentences for a per-sentence loss), needed to weight the pieces of a
    batch (distributed.my_pieces) when several processes or `cfg.accumulate` > 1 share it.

    Raises Diverged (a UserError) at the first non-finite loss or overflowing update, or non-finite weights after
    an epoch, having
    removed run_dir's training files; UserError naming checkpoint.pt or best.pt when one cannot be read;
    ValueError when the batch is shared (torchrun, accumulate > 1) and `units` is not given.
    """
    run_dir = Path(run_dir)
    main = distributed.is_main()
    shared = distributed.world_size() * cfg.accumulate > 1
    if shared and units is None:
        raise ValueError("train: a batch shared by several processes or accumulation steps needs `units`")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    optimizer = optimizer or make_optimizer(model.parameters(), cfg)
    state = {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": [], "done": False}
    torch.manual_seed(cfg.seed)
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.is_file():
        state = _restore(checkpoint, model, optimizer, scheduler)
    remedy = f"delete {run_dir} to train this model again from its start"
    step = distributed.data_parallel(model, loss_fn)
    device = next(model.parameters()).device.type
    progress = progress and main

    while not state["done"]:
        epoch = state["epoch"] + 1
        if distributed.world_size() > 1:
            distributed.rank_seed(cfg.seed, epoch)
        model.train()
        started, total_loss, total_tokens = time.time(), 0.0, 0
        epoch_batches = list(batches(epoch))
        bar = tqdm(epoch_batches, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
        for number, batch in enumerate(bar, 1):
            optimizer.zero_grad(set_to_none=True)
            value, n_tokens = _backward(step, batch, units, cfg, shared, device)
            if not math.isfinite(value):
                _diverged(run_dir, f"the training loss is {value} at epoch {epoch}, batch {number}")
            try:
                optimizer.step()
            except RuntimeError as error:  # torch refuses a step size that overflows the weights' float type
                if "overflow" not in str(error):
                    raise
                _diverged(run_dir, f"the update at epoch {epoch}, batch {number} overflows ({error})")
            if scheduler is not None:
                scheduler.step()
            total_loss += value * n_tokens
            total_tokens += n_tokens
            # refresh=False: the loss shows at the bar's own redraws, so TQDM_MININTERVAL holds in log files
            bar.set_postfix(loss=f"{total_loss / max(total_tokens, 1):.4f}", refresh=False)
        if not all(p.isfinite().all() for p in model.parameters()):  # the last update overflowed: no loss shows it
            _diverged(run_dir, f"the weights are not finite after epoch {epoch}")
        model.eval()
        with torch.no_grad():
            score = float(distributed.on_main(score_fn, model))
        record = {"epoch": epoch, "train_loss": total_loss / max(total_tokens, 1), "held_out_score": score,
                  "seconds": round(time.time() - started, 2), "tokens": total_tokens}
        state["history"].append(record)
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["done"] = state["bad_epochs"] >= cfg.patience or epoch >= cfg.max_epochs
        if main:
            _write_epoch(run_dir, model, optimizer, scheduler, state, improved, snapshots)
        distributed.barrier()  # the checkpoint is written before any rank goes on (or is killed meanwhile)
        if progress:
            tqdm.write(f"{run_dir.name} epoch {epoch}: loss {record['train_loss']:.4f} "
                       f"held-out {score:.4f} ({record['seconds']:.0f}s)")
        if after_epoch is not None:
            after_epoch(epoch)

    model.load_state_dict(load_torch(run_dir / "best.pt", remedy))
    model.eval()
    return TrainResult(state["best_score"], state["best_epoch"], state["epoch"], state["history"])


def train_cycles(model: torch.nn.Module, batches: Callable[[int], Iterable], loss_fn: Callable, score_fn: Callable,
                 loop: Training, run_dir, cycles: int, cycle_updates: int, min_lr: float,
                 optimizer: torch.optim.Optimizer, progress: bool = True,
                 after_cycle: Callable[[int], None] | None = None,
                 units: Callable[[object], int] | None = None) -> TrainResult:
    """A snapshot ensemble's cycles (SGDR, paper §6.1), either task: `train` for `cycles` loop epochs, each one
    cycle of `cycle_updates` updates (batches(i) yields cycle i's), the rate following warm_restarts from the
    optimiser's initial rate down towards `min_lr`, scored after each cycle (score_fn) but never stopped early,
    the weights after every cycle kept as run_dir/epoch-<i>.pt, cycle i's snapshot, written before the checkpoint
    that marks the cycle done (so a kill loses at most the running cycle). `loop` gives the seed, precision and
    accumulation; its budget and patience are replaced. Raises as `train` does."""
    loop = replace(loop, max_epochs=cycles, patience=cycles)
    return train(model, batches, loss_fn, score_fn, loop, run_dir, progress, after_cycle, optimizer,
                 warm_restarts(optimizer, cycle_updates, min_lr), snapshots=cycles, units=units)


def _backward(step, batch, units, cfg: Training, shared: bool, device: str) -> tuple[float, int]:
    """Forward and backward passes of this rank's pieces of `batch` (distributed.my_pieces; the batch itself when
    it is not shared), their gradients summed (DDP reduces them across the ranks at the last piece). Returns the
    batch's mean loss and its token count, over every rank's pieces."""
    pieces = distributed.my_pieces(batch, units, cfg.accumulate) if shared else [(batch, 1.0)]
    loss_sum, tokens = 0.0, 0
    for i, (piece, weight) in enumerate(pieces):
        with step.no_sync() if i < len(pieces) - 1 else nullcontext():
            with _autocast(cfg.precision, device):
                loss, n_tokens = step(piece)
            (loss if weight == 1.0 else loss * weight).backward()
        if weight:
            loss_sum += weight / distributed.world_size() * loss.item()
            tokens += n_tokens
    if not shared:
        return loss_sum, tokens
    loss_sum, tokens = distributed.all_sum([loss_sum, tokens])
    return loss_sum, int(tokens)


def _autocast(precision: str, device: str):
    """bf16 autocast of a training forward pass (`train.precision`) on `device` ("cpu", "cuda"); fp32: none."""
    return torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def _write_epoch(run_dir: Path, model, optimizer, scheduler, state: dict, improved: bool, snapshots: int) -> None:
    """An epoch's files, each atomically: best weights (if improved), the snapshot, the checkpoint that marks the
    epoch done, then the log rewritten from its history."""
    epoch = state["epoch"]
    if improved:
        atomic_torch_save(model.state_dict(), run_dir / "best.pt")
    if snapshots:
        atomic_torch_save(model.state_dict(), run_dir / f"epoch-{epoch}.pt")
    _save(run_dir / "checkpoint.pt", model, optimizer, state, scheduler)
    for stale in run_dir.glob("epoch-*.pt"):
        if int(stale.stem.split("-")[1]) <= epoch - snapshots:
            stale.unlink()
    atomic_write_text(run_dir / "log.jsonl", "".join(strict_json(r) + "\n" for r in state["history"]))


def _save(path: Path, model, optimizer, state: dict, scheduler=None) -> None:
    atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                       "rng": torch.get_rng_state(),
                       "scheduler": scheduler.state_dict() if scheduler is not None else None}, path)


def _diverged(run_dir: Path, what: str):
    """Remove the training files of `run_dir` (checkpoint, best and snapshot weights, log: rank 0) and raise
    Diverged (every rank: the loss they all see is the batch's)."""
    if distributed.is_main():
        for path in [run_dir / "checkpoint.pt", run_dir / "best.pt", run_dir / "log.jsonl",
                     *run_dir.glob("epoch-*.pt")]:
            path.unlink(missing_ok=True)
    raise Diverged(f"{run_dir}: training diverged, {what}; lower train.lr and train again (its files were removed; "
                   "a folder in which nothing else was trained takes the corrected config)")


def _restore(path: Path, model, optimizer, scheduler=None) -> dict:
    # load_state_dict moves to the model's device; weights_only=False: the checkpoint holds the RNG state and history
    saved = load_torch(path, f"delete it to train {path.parent} again from its start", weights_only=False)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return saved["state"]


def average_snapshots(run_dir: Path, last_round: int, n: int) -> dict:
    """The mean of the weights after rounds last_round - n + 1 .. last_round (those that exist)."""
    paths = [run_dir / f"epoch-{r}.pt" for r in range(max(1, last_round - n + 1), last_round + 1)]
    states = [load_torch(p, f"delete {run_dir} to train this model again") for p in paths if p.is_file()]
    if not states:
        raise UserError(f"{run_dir}: no weight snapshots of rounds {last_round - n + 1}..{last_round} to average")
    return {key: sum(s[key] for s in states) / len(states) for key in states[0]}
