"""The training loop: the paper's recipe (Sec. 5), watched in TensorBoard, safe to stop and resume.

    train(config, run_dir)  resumes run_dir if it holds checkpoints, else starts it

One optimizer step = `world_size x train.accumulate` micro-batches of at most `train.max_tokens`
tokens a side. Every rank knows every batch (they are drawn from one seed), so the loss is
normalized by the target tokens of the whole step and one process with accumulation computes
exactly what several data-parallel processes compute.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import logging
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint, runtime
from .batching import Step, collate, epoch_steps, make_batches, padding_fraction
from .config import Config, TrainConfig, from_dict, save_config, to_plain
from .data import Prepared, prepare
from .errors import UserError, disk_full
from .loss import label_smoothed_loss
from .metrics import bleu
from .model import Transformer
from .monitor import Monitor
from .optim import lr_at, make_optimizer, set_lr
from .tokenizer import PAD
from .translation import Translator
from .tuning import tune

log = logging.getLogger(__name__)


class TrainingError(UserError):
    """Training cannot go on; the message says why and what to do."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    epoch_step: int = 0  # steps taken in the current epoch: the data position
    epoch_steps: int = 0  # steps an epoch, in the batching of the run (0 in checkpoints from before it was kept)
    best_bleu: float = -1.0
    stale_validations: int = 0  # validations since the best BLEU
    seconds: float = 0.0  # wall-clock training time over all sessions
    tokens: int = 0  # source + target tokens trained on


@dataclass
class StepResult:
    """One optimizer step, summed over every rank's micro-batches."""

    loss: float  # label-smoothed loss over the step's target tokens
    nll: float  # negative log-likelihood of the same tokens
    tokens: int  # source + target tokens
    tgt_tokens: int  # target tokens, </s> included: what the loss is normalized by
    lr: float
    grad_norm: float
    skipped: bool  # a non-finite loss or gradient: the parameters did not move


@dataclass
class Validation:
    loss: float  # label-smoothed loss per target token
    ppl: float
    bleu: float | None = None  # greedy decoding, when train.valid_bleu
    hyps: list[str] | None = None


@dataclass
class Context:
    """What the training loop works with, built once by `train`."""

    config: Config
    rt: runtime.Runtime
    data: Prepared
    model: Transformer  # the parameters: what is validated and saved
    net: torch.nn.Module  # what steps run through: the model, or it wrapped by DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None  # float16 only
    run_dir: Path | None = None
    monitor: Monitor | None = None  # rank 0 only
    stop: runtime.StopRequest | None = None


def train(config: Config, run_dir: str | Path, device: str | None = None) -> TrainState:
    """Train `config` into `run_dir`, resuming the run if the folder holds checkpoints."""
    run_dir = Path(run_dir)
    rt = runtime.setup(config.train, device)
    try:
        with rt.main_alone(lambda: runtime.lock_run(run_dir)) or contextlib.nullcontext():
            ctx, state = _build(config, run_dir, rt)
            max_steps = config.train.max_steps
            if max_steps and state.step >= max_steps:
                log.info(f"{run_dir} already reached train.max_steps={max_steps}; raise it to train further, "
                         f'e.g. ARGS="train.max_steps={max_steps * 2}"')
                return state
            ctx.stop = runtime.StopRequest()
            try:
                ctx.monitor = rt.main_alone(lambda: _open_run_folder(ctx, state))
                if rt.distributed:
                    # gradients as views of DDP's all-reduce buckets: one copy of them a rank, not two
                    ctx.net = torch.nn.parallel.DistributedDataParallel(ctx.model, gradient_as_bucket_view=True)
                if config.train.compile:
                    ctx.net = torch.compile(ctx.net)
                loop(ctx, state)
                if rt.distributed:
                    dist.barrier()  # no rank tears the group down while another still talks to it
                if rt.is_main and ctx.stop.reason is None:  # a Ctrl-C should not wait for a sweep
                    tune_last(run_dir, rt.device)
            except KeyboardInterrupt:  # a second Ctrl-C: nothing is saved
                log.error(f"\naborted; the last checkpoint in {run_dir}/checkpoints is intact. "
                          f"Resume: make train RUN={shlex.quote(str(run_dir))}")
                raise
            finally:
                ctx.stop.restore()
                if ctx.monitor is not None:
                    ctx.monitor.close()
                if rt.distributed:  # DDP sits in a reference cycle, and an error's traceback holds ctx: free
                    ctx.net = ctx.model  # DDP (and its hold on the process group) now, not at exit
                    gc.collect()
            return state
    except OSError as error:  # the run's config, log, TensorBoard or validation outputs found the disk full
        if not disk_full(error):
            raise
        raise TrainingError(f"no space left on the disk of {run_dir}: free some and run the command again; training "
                            f"resumes from the last checkpoint in {run_dir}/checkpoints") from None
    finally:
        runtime.teardown()


def loop(ctx: Context, state: TrainState) -> None:
    """Train until a stop reason: validate, keep the best, save and stop where the config says."""
    cfg, rt, monitor = ctx.config.train, ctx.rt, ctx.monitor
    src_lens, tgt_lens = ctx.data.train.src.lengths, ctx.data.train.tgt.lengths
    session_start = last_save = time.perf_counter()
    seconds_before = state.seconds
    bad_steps = 0
    # Each epoch is batched when it begins, between steps, so the batching's temporaries reuse the
    # memory a step frees. Made in a thread beside a step, they could not, and the allocator kept
    # them (up to 0.1 GiB a process on 4.5M pairs); nor did the thread save time on a CPU: the
    # shuffle holds the GIL, and the step beside it took as long as the batching.
    steps_of = lambda epoch: epoch_steps(src_lens, tgt_lens, cfg.max_tokens, cfg.seed + epoch, rt.world_size,
                                         cfg.accumulate, rt.rank)
    steps = steps_of(state.epoch)
    if state.epoch_steps not in (0, len(steps)) or state.epoch_step >= len(steps):
        _keep_the_epochs_fraction(state, len(steps), rt.is_main)
    state.epoch_steps = len(steps)
    if rt.is_main:
        _log_batching(steps, src_lens, tgt_lens, cfg, rt)
    reason = None
    while reason is None:
        for group in steps[state.epoch_step :]:
            tic = time.perf_counter()
            result = train_step(ctx, group, state.step + 1)
            state.epoch_step += 1
            if state.epoch_step == len(steps):
                state.epoch, state.epoch_step = state.epoch + 1, 0
            if result.skipped:
                bad_steps += 1
                log.warning(f"step {state.step + 1}: non-finite loss or gradient ({result.loss:.3g}); step skipped")
            else:
                bad_steps = 0
                state.step += 1
                state.tokens += result.tokens
            state.seconds = seconds_before + time.perf_counter() - session_start
            step_seconds = time.perf_counter() - tic
            reason = _stop_reason(cfg, state, ctx.stop, bad_steps)
            failure = None
            try:  # rank 0's work alone: the log, validation, checkpoints
                if monitor is not None:
                    monitor.step(state, result, step_seconds)
                ends_normally = reason is not None and ctx.stop.reason is None  # Ctrl-C should not wait for BLEU
                if rt.is_main and not result.skipped and (state.step % cfg.valid_every == 0 or ends_normally):
                    early_stop = _validate_and_keep_best(ctx, state)
                    reason = reason or early_stop
                save_due = (state.step % cfg.save_every == 0
                            or time.perf_counter() - last_save >= cfg.save_every_minutes * 60)
                if rt.is_main and (reason or save_due):
                    save_checkpoint(ctx, state)
                    last_save = time.perf_counter()
            except Exception as error:  # a full disk, say: the other ranks stop with it, not on a lost peer
                failure = error
            reason = rt.agree(reason, failure)
            if reason:
                break
        else:  # the finished epoch's batches are freed before the next epoch's are made, not after
            steps = group = None
            steps = steps_of(state.epoch)
    if rt.is_main:
        log.info(f"stopped at step {state.step} ({reason}); {state.seconds / 60:.1f} min of training in {ctx.run_dir}")
        if ctx.stop.reason or "non-finite" in reason:
            log.info(f"resume with: make train RUN={shlex.quote(str(ctx.run_dir))} (same CONFIG and ARGS)")
    if bad_steps >= cfg.max_bad_steps:
        if not rt.is_main:  # every rank counted the same steps; rank 0 says it once
            raise rt.peer_failed(0)
        raise TrainingError(f"the loss or gradient was non-finite {bad_steps} steps in a row at step {state.step}; "
                            f"a checkpoint is saved in {ctx.run_dir}/checkpoints. Lower train.lr_factor, raise "
                            f"train.warmup_steps or use train.precision=float32, then resume")


def _validate_and_keep_best(ctx: Context, state: TrainState) -> str | None:
    """Validate (rank 0); a better BLEU saves best.pt. Returns the early-stopping reason, if it is time."""
    cfg, tic = ctx.config.train, time.perf_counter()
    valid = validate(ctx.model, ctx.data, ctx.config, ctx.rt, cfg.valid_bleu)
    reason = None
    if valid.bleu is not None:  # BLEU decides best.pt and early stopping
        improved = valid.bleu > state.best_bleu
        state.best_bleu = max(state.best_bleu, valid.bleu)
        state.stale_validations = 0 if improved else state.stale_validations + 1
        if improved:
            save_checkpoint(ctx, state, name="best.pt")
        if cfg.early_stopping and state.stale_validations >= cfg.early_stopping:
            reason = f"early stopping: no better validation BLEU in {cfg.early_stopping} validations"
    ctx.monitor.validation(state, valid, ctx.model, ctx.data, time.perf_counter() - tic)
    return reason


def _log_batching(steps: list[Step], src_lens, tgt_lens, cfg: TrainConfig, rt: runtime.Runtime) -> None:
    """Rank 0's line on an epoch's batches: how many, and their padding (its list of them freed on return)."""
    mine = [batch for step in steps for batch in step.batches]  # every rank has as many
    padding = f"{padding_fraction(mine, src_lens, tgt_lens):.1%} padding"
    share = f", {len(mine)} a rank ({padding} on rank 0)" if rt.distributed else f", {padding}"
    log.info(f"batches: {len(mine) * rt.world_size} an epoch of at most {cfg.max_tokens} tokens a side{share}; "
             f"{rt.world_size * cfg.accumulate} per step")


def _keep_the_epochs_fraction(state: TrainState, steps: int, log_it: bool) -> None:
    """A run resumed with other batching (train.max_tokens, train.accumulate, the number of processes)
    has another number of steps an epoch: it goes on from the same fraction of the epoch."""
    before = state.epoch_steps or state.epoch_step + 1
    state.epoch_step = state.epoch_step * steps // before
    if log_it:
        log.info(f"the batching differs from the checkpoint's ({before} steps an epoch, now {steps}): epoch "
                 f"{state.epoch + 1} goes on from step {state.epoch_step} of {steps}, the same fraction")


def train_step(ctx: Context, group: Step, step: int) -> StepResult:
    """Optimizer step number `step` over this rank's micro-batches of `group`."""
    cfg, rt, train = ctx.config.train, ctx.rt, ctx.data.train
    ctx.net.train()
    # summed where they are computed and read once a step: a read each micro-batch would make the CPU
    # wait for the GPU before it queues the next one
    sums = torch.zeros(2, dtype=torch.float64, device=rt.device)  # smoothed loss, NLL
    tokens = 0  # source + target
    for k, indices in enumerate(group.batches):
        batch = collate([train.src[i] for i in indices], [train.tgt[i] for i in indices]).to(rt.device)
        last = k == len(group.batches) - 1
        sync = contextlib.nullcontext() if last or not rt.distributed else ctx.net.no_sync()
        with sync:
            with rt.autocast():
                logits = ctx.net(batch.src, batch.src_pad, batch.tgt_in)  # (B, T, V)
            loss, nll = label_smoothed_loss(logits, batch.tgt_out, cfg.label_smoothing, PAD)
            scaled = loss * rt.world_size / group.tgt_tokens  # DDP averages over ranks
            (ctx.scaler.scale(scaled) if ctx.scaler else scaled).backward()
        sums += torch.stack([loss.detach(), nll.detach()]).double()
        tokens += batch.src_tokens + batch.tgt_tokens
    sums = torch.cat([sums.cpu(), torch.tensor([tokens], dtype=torch.float64)])
    if rt.distributed:
        dist.all_reduce(sums)
    optimizer, scaler = ctx.optimizer, ctx.scaler
    if scaler:
        scaler.unscale_(optimizer)
    max_norm = cfg.clip_norm if cfg.clip_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(ctx.net.parameters(), max_norm)
    loss_value = float(sums[0]) / group.tgt_tokens
    skipped = not (math.isfinite(loss_value) and torch.isfinite(grad_norm))
    lr = lr_at(step, ctx.config.model.d_model, cfg.warmup_steps, cfg.lr_factor)
    if skipped and scaler is None:
        optimizer.zero_grad(set_to_none=True)
    else:
        set_lr(optimizer, lr)
        if scaler:  # float16: the scaler skips steps with inf gradients and lowers its scale
            scaler.step(optimizer)
            scaler.update()
            skipped = not math.isfinite(loss_value)
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return StepResult(float(sums[0]), float(sums[1]), int(sums[2]), group.tgt_tokens, lr, float(grad_norm), skipped)


@torch.no_grad()
def validate(model: Transformer, data: Prepared, config: Config, rt: runtime.Runtime,
             with_bleu: bool = True) -> Validation:
    """Teacher-forced loss and perplexity on the validation split; greedy-decoded BLEU."""
    model.eval()
    valid = data.valid
    loss = nll = tokens = 0.0
    src_lens, tgt_lens = [len(s) for s in valid.src], [len(t) for t in valid.tgt]
    for indices in make_batches(src_lens, tgt_lens, max(config.train.max_tokens, max(src_lens + tgt_lens) + 1)):
        batch = collate([valid.src[i] for i in indices], [valid.tgt[i] for i in indices]).to(rt.device)
        with rt.autocast():
            logits = model(batch.src, batch.src_pad, batch.tgt_in)
        batch_loss, batch_nll = label_smoothed_loss(logits, batch.tgt_out, config.train.label_smoothing, PAD)
        loss, nll, tokens = loss + batch_loss.item(), nll + batch_nll.item(), tokens + batch.tgt_tokens
    result = Validation(loss / tokens, math.exp(min(nll / tokens, 50)))
    if with_bleu:
        translator = Translator(model, data.tokenizer, config)
        hyps = translator.translate_ids(valid.src, beam_size=1)
        result.hyps = [data.tokenizer.decode(h[0].tokens) if h else "" for h in hyps]
        result.bleu = bleu(result.hyps, valid.tgt_text, lowercase=data.tokenizer.lowercase)
    return result


def tune_last(run_dir: Path, device) -> None:
    """Choose the length penalty of what the run leaves for translation (best.pt, else its newest step)."""
    folder = run_dir / "checkpoints"
    path = folder / "best.pt" if (folder / "best.pt").is_file() else checkpoint.step_checkpoints(folder)[-1]
    tune(path, device=str(device))


def save_checkpoint(ctx: Context, state: TrainState, name: str | None = None) -> Path:
    """Step checkpoints keep everything needed to resume; best.pt keeps what translation needs."""
    folder = ctx.run_dir / "checkpoints"
    payload = {
        "model": ctx.model.state_dict(),
        "state": dataclasses.asdict(state),
        "config": to_plain(ctx.config.to_dict()),
        "tokenizer": ctx.data.tokenizer.to_str(),
        "rng": runtime.rng_state(),
    }
    if name is None:
        payload["optimizer"] = ctx.optimizer.state_dict()
        if ctx.scaler is not None:
            payload["scaler"] = ctx.scaler.state_dict()
    path = checkpoint.save(payload, folder / (name or f"step_{state.step:07d}.pt"))
    if name is None:
        checkpoint.prune(folder, ctx.config.train.keep_last, ctx.config.train.save_every)
    return path


# ---------------------------------------------------------------------------- helpers

def _build(config: Config, run_dir: Path, rt: runtime.Runtime) -> tuple[Context, TrainState]:
    """Data, model and optimizer, and the run's state: resumed from its newest checkpoint, or new."""
    if rt.is_main:
        log.info(rt.describe())
    data = _prepare(config, rt)
    model = Transformer(config.model, data.tokenizer.vocab_size).to(rt.device)
    optimizer = make_optimizer(model, config.train)
    scaler = torch.amp.GradScaler("cuda") if rt.autocast_dtype == torch.float16 else None
    ctx = Context(config, rt, data, model, model, optimizer, scaler, run_dir)
    state = _resume_or_start(ctx)
    if rt.distributed:
        _same_step_on_every_rank(state.step, run_dir)
    return ctx, state


def prepare_run(config: Config, run_dir: str | Path) -> None:
    """What every rank of a distributed run needs first, done once in one process: the config read,
    the run folder free, the data prepared. `make train NPROC=...` runs it before torchrun starts the
    ranks, so a mistake ends in one line and the ranks find the data ready."""
    with runtime.lock_run(Path(run_dir)):
        prepare(config)


def _prepare(config: Config, rt: runtime.Runtime) -> Prepared:
    """The first process of each machine prepares (and caches) the data; the others then map the cache.

    They wait in a group of their own: NCCL's collectives give up after 10 minutes, and downloading
    and preparing WMT14 can take longer.
    """
    if not rt.distributed:
        return prepare(config)
    waiting = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=12))
    prepared = failure = None
    if rt.local_rank != 0:
        dist.barrier(group=waiting)
    try:
        prepared = prepare(config)
    except Exception as error:  # the others on this machine then meet the same error, not a lost peer
        failure = error
    if rt.local_rank == 0:
        dist.barrier(group=waiting)
    dist.destroy_process_group(waiting)
    rt.agree(None, failure)  # a machine without the data stops every rank, each machine with one line
    return prepared


COMPATIBLE = ("model", "tokenizer")


def _resume_or_start(ctx: Context) -> TrainState:
    """The state of the run's newest good checkpoint, loaded into the context; a new run's otherwise."""
    run_dir, config, rt = ctx.run_dir, ctx.config, ctx.rt
    # read on the CPU: load_state_dict moves model and optimizer state to their parameters' device,
    # and the generator states must stay CPU tensors
    found = checkpoint.latest_good(run_dir / "checkpoints")
    if found is None:
        if rt.is_main:
            log.info(f"new run {run_dir}: {sum(p.numel() for p in ctx.model.parameters()):,} parameters")
        return TrainState()
    path, saved = found
    old = from_dict(saved["config"])
    for section in COMPATIBLE:
        if getattr(old, section) != getattr(config, section):
            raise TrainingError(f"{run_dir} was trained with different {section} settings ({getattr(old, section)}); "
                                f"resume it with the same CONFIG, or start a new run with RUN=runs/<new name>")
    if saved["tokenizer"] != ctx.data.tokenizer.to_str():
        raise TrainingError(f"the data now gives a different vocabulary than the one {run_dir} was trained with; "
                            f"resume with the same corpus (DATA=) and data settings, or start a new run")
    ctx.model.load_state_dict(saved["model"])
    if "optimizer" in saved:
        ctx.optimizer.load_state_dict(saved["optimizer"])
    if ctx.scaler is not None and "scaler" in saved:
        ctx.scaler.load_state_dict(saved["scaler"])
    if rt.is_main:
        runtime.set_rng_state(saved["rng"])
    state = TrainState(**saved["state"])
    if rt.is_main:
        log.info(f"resuming {run_dir} from {path.name}: step {state.step}, epoch {state.epoch}, "
                 f"{state.seconds / 60:.1f} min trained")
    return state


def _open_run_folder(ctx: Context, state: TrainState) -> Monitor:
    """Rank 0, holding the run lock: the run's config and vocabulary written, killed saves removed, the
    log and TensorBoard opened."""
    run_dir = ctx.run_dir
    checkpoint.remove_killed_saves(run_dir / "checkpoints")
    save_config(ctx.config, run_dir / "config.yaml")
    (run_dir / "tokenizer.json").write_text(ctx.data.tokenizer.to_str())
    return Monitor(run_dir, ctx.config, state)


def _same_step_on_every_rank(step: int, run_dir: Path) -> None:
    """Ranks that resumed from different checkpoints would take different steps and stall each other."""
    steps = torch.tensor([step, -step])
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)  # (latest, -earliest) over the ranks
    latest, earliest = int(steps[0]), -int(steps[1])
    if latest != earliest:
        raise TrainingError(f"the ranks find different checkpoints in {run_dir} (steps {earliest} to {latest}); "
                            f"every machine of a run must see the same run folder (a shared filesystem)")


def _stop_reason(cfg: TrainConfig, state: TrainState, stop: runtime.StopRequest, bad_steps: int) -> str | None:
    if stop.reason:
        return f"stopped by {stop.reason}"
    if bad_steps >= cfg.max_bad_steps:
        return f"{bad_steps} non-finite steps in a row"
    if cfg.max_steps and state.step >= cfg.max_steps:
        return f"reached train.max_steps={cfg.max_steps}"
    if cfg.max_epochs and state.epoch >= cfg.max_epochs:
        return f"reached train.max_epochs={cfg.max_epochs}"
    if cfg.max_minutes and state.seconds >= cfg.max_minutes * 60:
        return f"reached train.max_minutes={cfg.max_minutes:g}"
    return None
