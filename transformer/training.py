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
import gc
import json
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint, runtime
from .batching import collate, make_batches, padding_fraction, shard
from .config import Config, from_dict, save_config, to_plain
from .data import Prepared, prepare
from .loss import label_smoothed_loss
from .metrics import bleu
from .model import Transformer
from .optim import lr_at, make_optimizer, set_lr
from .tokenizer import PAD
from .translation import Translator

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    epoch_step: int = 0  # steps taken in the current epoch: the data position
    best_bleu: float = -1.0
    stale_validations: int = 0  # validations since the best BLEU
    seconds: float = 0.0  # wall-clock training time over all sessions
    tokens: int = 0  # source + target tokens trained on


class StopRequest:
    """Ctrl-C or SIGTERM: finish the step, save, exit. A second Ctrl-C aborts at once."""

    def __init__(self):
        self.reason: str | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        log.warning(f"\n{self.reason}: finishing this step and saving a checkpoint (Ctrl-C again aborts without saving)")

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(config: Config, run_dir: str | Path, device: str | None = None) -> TrainState:
    run_dir = Path(run_dir)
    cfg = config.train
    rt = runtime.setup(cfg, device)
    if rt.is_main:
        log.info(rt.describe())
    prepared = _prepare(config, rt)
    model = Transformer(config.model, prepared.tokenizer.vocab_size).to(rt.device)
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if rt.autocast_dtype == torch.float16 else None
    state = _resume_or_start(run_dir, config, prepared, model, optimizer, scaler, rt)
    if cfg.max_steps and state.step >= cfg.max_steps:
        log.info(f"{run_dir} already reached train.max_steps={cfg.max_steps}; raise it to train further, "
                 f'e.g. ARGS="train.max_steps={cfg.max_steps * 2}"')
        return state
    net = torch.nn.parallel.DistributedDataParallel(model) if rt.distributed else model
    if cfg.compile:
        net = torch.compile(net)
    writer = _writer(run_dir, config, state) if rt.is_main else None
    stop = StopRequest()
    try:
        _loop(config, run_dir, rt, prepared, model, net, optimizer, scaler, state, writer, stop)
        if rt.distributed:
            dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        stop.restore()
        if writer is not None:
            writer.close()
        if rt.distributed:  # DDP sits in a reference cycle: free it now, not in a Gloo/NCCL teardown at exit
            del net
            gc.collect()
        runtime.teardown()
    return state


def _loop(config, run_dir, rt, prepared, model, net, optimizer, scaler, state, writer, stop):
    cfg = config.train
    src_lens = [len(s) for s in prepared.train.src]
    tgt_lens = [len(t) for t in prepared.train.tgt]
    per_step = rt.world_size * cfg.accumulate
    session_start = last_save = time.perf_counter()
    seconds_before = state.seconds
    interval = {"loss": 0.0, "nll": 0.0, "tokens": 0, "tgt_tokens": 0, "time": 0.0, "steps": 0}
    bad_steps = 0
    if rt.is_main:
        first = make_batches(src_lens, tgt_lens, cfg.max_tokens, seed=cfg.seed)
        log.info(f"batches: {len(first)} an epoch of at most {cfg.max_tokens} tokens a side, "
                 f"{padding_fraction(first, src_lens, tgt_lens):.1%} padding; {per_step} per step")
    bar = _progress(cfg, state, rt)
    reason = None
    while reason is None:
        batches = shard(make_batches(src_lens, tgt_lens, cfg.max_tokens, seed=cfg.seed + state.epoch), rt.world_size)
        groups = [batches[i : i + per_step] for i in range(0, len(batches), per_step)]
        for group in groups[state.epoch_step :]:
            tic = time.perf_counter()
            stats = train_step(net, optimizer, scaler, group, prepared, tgt_lens, state, config, rt)
            state.epoch_step += 1
            if state.epoch_step == len(groups):
                state.epoch, state.epoch_step = state.epoch + 1, 0
            if stats["skipped"]:
                bad_steps += 1
                log.warning(f"step {state.step + 1}: non-finite loss or gradient ({stats['loss']:.3g}); step skipped")
            else:
                bad_steps = 0
                state.step += 1
                state.tokens += stats["tokens"]
                for key in ("loss", "nll", "tokens", "tgt_tokens"):
                    interval[key] += stats[key]
                interval["steps"] += 1
            interval["time"] += time.perf_counter() - tic
            state.seconds = seconds_before + time.perf_counter() - session_start
            if writer is not None and interval["steps"] and (state.step % cfg.log_every == 0):
                _log_train(writer, run_dir, state, interval, stats, bar, cfg.max_minutes)
                interval = dict.fromkeys(interval, 0)
            if bar is not None:
                bar.update(0 if stats["skipped"] else 1)
            reason = _stop_reason(cfg, state, stop, bad_steps, rt)
            ends_normally = reason is not None and stop.reason is None  # Ctrl-C should not wait for BLEU
            if rt.is_main and not stats["skipped"] and (state.step % cfg.valid_every == 0 or ends_normally):
                if validate_and_log(model, prepared, config, rt, writer, run_dir, state) and cfg.early_stopping \
                        and state.stale_validations >= cfg.early_stopping and reason is None:
                    reason = f"early stopping: no better validation BLEU in {cfg.early_stopping} validations"
            minutes_since_save = (time.perf_counter() - last_save) / 60
            if rt.is_main and (reason or state.step % cfg.save_every == 0 or minutes_since_save >= cfg.save_every_minutes):
                save_checkpoint(run_dir, model, optimizer, scaler, state, config, prepared)
                last_save = time.perf_counter()
            reason = _agree(reason, rt)
            if reason:
                break
    if bar is not None:
        bar.close()
    if rt.is_main:
        log.info(f"stopped at step {state.step} ({reason}); {state.seconds / 60:.1f} min of training in {run_dir}")
        if stop.reason or "non-finite" in reason:
            log.info(f"resume with: make train RUN={run_dir} (same CONFIG and ARGS)")
    if bad_steps >= cfg.max_bad_steps:
        raise TrainingError(f"the loss or gradient was non-finite {bad_steps} steps in a row at step {state.step}; "
                            f"a checkpoint is saved in {run_dir}/checkpoints. Lower train.lr_factor, raise "
                            f"train.warmup_steps or use train.precision=float32, then resume")


def train_step(net, optimizer, scaler, group, prepared: Prepared, tgt_lens, state: TrainState, config: Config,
               rt: runtime.Runtime) -> dict:
    """One optimizer step over this rank's micro-batches of `group`; returns the step's global sums."""
    cfg = config.train
    net.train()
    step_tgt_tokens = sum(tgt_lens[i] + 1 for batch in group for i in batch)  # every rank knows them all
    mine = group[rt.rank :: rt.world_size]
    sums = torch.zeros(3, dtype=torch.float64)  # smoothed loss, NLL, source + target tokens
    for k, indices in enumerate(mine):
        batch = collate([prepared.train.src[i] for i in indices], [prepared.train.tgt[i] for i in indices],
                        indices).to(rt.device)
        last = k == len(mine) - 1
        sync = contextlib.nullcontext() if last or not rt.distributed else net.no_sync()
        with sync:
            with rt.autocast():
                logits = net(batch.src, batch.src_pad, batch.tgt_in)  # (B, T, V)
            loss, nll = label_smoothed_loss(logits, batch.tgt_out, cfg.label_smoothing, PAD)
            scaled = loss * rt.world_size / step_tgt_tokens  # DDP averages over ranks
            (scaler.scale(scaled) if scaler else scaled).backward()
        sums += torch.tensor([loss.item(), nll.item(), batch.src_tokens + batch.tgt_tokens], dtype=torch.float64)
    if rt.distributed:
        dist.all_reduce(sums)
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_norm if cfg.clip_norm > 0 else float("inf"))
    loss_value = float(sums[0]) / step_tgt_tokens
    skipped = not (math.isfinite(loss_value) and torch.isfinite(grad_norm))
    lr = lr_at(state.step + 1, config.model.d_model, cfg.warmup_steps, cfg.lr_factor)
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
    return {"loss": float(sums[0]), "nll": float(sums[1]), "tokens": int(sums[2]), "tgt_tokens": step_tgt_tokens,
            "lr": lr, "grad_norm": float(grad_norm), "skipped": skipped}


@torch.no_grad()
def validate(model: Transformer, prepared: Prepared, config: Config, rt: runtime.Runtime,
             with_bleu: bool = True) -> dict:
    """Teacher-forced loss and perplexity on the validation split; greedy-decoded BLEU."""
    model.eval()
    valid = prepared.valid
    loss = nll = tokens = 0.0
    src_lens, tgt_lens = [len(s) for s in valid.src], [len(t) for t in valid.tgt]
    for indices in make_batches(src_lens, tgt_lens, max(config.train.max_tokens, max(src_lens + tgt_lens) + 1)):
        batch = collate([valid.src[i] for i in indices], [valid.tgt[i] for i in indices], indices).to(rt.device)
        with rt.autocast():
            logits = model(batch.src, batch.src_pad, batch.tgt_in)
        l, n = label_smoothed_loss(logits, batch.tgt_out, config.train.label_smoothing, PAD)
        loss, nll, tokens = loss + l.item(), nll + n.item(), tokens + batch.tgt_tokens
    out = {"loss": loss / tokens, "ppl": math.exp(min(nll / tokens, 50))}
    if with_bleu:
        translator = Translator(model, prepared.tokenizer, config)
        hyps = translator.translate_ids(valid.src, beam_size=1)
        out["hyps"] = [prepared.tokenizer.decode(h[0].tokens) if h else "" for h in hyps]
        out["bleu"] = bleu(out["hyps"], valid.tgt_text, lowercase=prepared.tokenizer.lowercase)
    return out


def validate_and_log(model, prepared, config, rt, writer, run_dir: Path, state: TrainState) -> bool:
    """Validate, log to TensorBoard and the run log, track the best BLEU. True if BLEU was computed."""
    tic = time.perf_counter()
    result = validate(model, prepared, config, rt, config.train.valid_bleu)
    message = f"validation at step {state.step}: loss {result['loss']:.3f}, ppl {result['ppl']:.2f}"
    writer.add_scalar("valid/loss", result["loss"], state.step)
    writer.add_scalar("valid/ppl", result["ppl"], state.step)
    row = {"step": state.step, "minutes": round(state.seconds / 60, 3), "valid_loss": result["loss"],
           "valid_ppl": result["ppl"]}
    if "bleu" in result:
        improved = result["bleu"] > state.best_bleu
        state.best_bleu = max(state.best_bleu, result["bleu"])
        state.stale_validations = 0 if improved else state.stale_validations + 1
        writer.add_scalar("valid/bleu", result["bleu"], state.step)
        writer.add_scalar("valid/best_bleu", state.best_bleu, state.step)
        row["valid_bleu"] = result["bleu"]
        message += f", BLEU {result['bleu']:.2f} (best {state.best_bleu:.2f})"
        _log_samples(writer, prepared, result["hyps"], state.step)
        hyp_dir = run_dir / "hyps"
        hyp_dir.mkdir(parents=True, exist_ok=True)
        (hyp_dir / f"valid_step_{state.step:07d}.txt").write_text("".join(h + "\n" for h in result["hyps"]))
        if improved:
            save_checkpoint(run_dir, model, None, None, state, config, prepared, name="best.pt")
    _log_attention(writer, model, prepared, rt, state.step)
    writer.flush()
    _append_log(run_dir, row)
    log.info(f"{message} [{time.perf_counter() - tic:.1f}s]")
    return "bleu" in result


def save_checkpoint(run_dir: Path, model, optimizer, scaler, state: TrainState, config: Config, prepared: Prepared,
                    name: str | None = None) -> Path:
    """Step checkpoints keep everything needed to resume; best.pt keeps what translation needs."""
    folder = run_dir / "checkpoints"
    payload = {
        "model": model.state_dict(),
        "state": dataclasses.asdict(state),
        "config": to_plain(config.to_dict()),
        "tokenizer": prepared.tokenizer.to_str(),
        "rng": runtime.rng_state(),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if scaler is not None:
        payload["scaler"] = scaler.state_dict()
    path = checkpoint.save(payload, folder / (name or f"step_{state.step:07d}.pt"))
    if name is None:
        checkpoint.prune(folder, config.train.keep_last, config.train.save_every)
    return path


# ---------------------------------------------------------------------------- helpers

def _prepare(config: Config, rt: runtime.Runtime) -> Prepared:
    """Rank 0 prepares (and caches) the data first; the others then read the cache."""
    if rt.distributed and not rt.is_main:
        dist.barrier()
    prepared = prepare(config)
    if rt.distributed and rt.is_main:
        dist.barrier()
    return prepared


COMPATIBLE = ("model", "tokenizer")


def _resume_or_start(run_dir: Path, config: Config, prepared: Prepared, model, optimizer, scaler, rt) -> TrainState:
    # read on the CPU: load_state_dict moves model and optimizer state to their parameters' device,
    # and the generator states must stay CPU tensors
    found = checkpoint.latest_good(run_dir / "checkpoints")
    if found is None:
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, run_dir / "config.yaml")
            (run_dir / "tokenizer.json").write_text(prepared.tokenizer.to_str())
            log.info(f"new run {run_dir}: {sum(p.numel() for p in model.parameters()):,} parameters")
        return TrainState()
    path, saved = found
    old = from_dict(saved["config"])
    for section in COMPATIBLE:
        if getattr(old, section) != getattr(config, section):
            raise TrainingError(f"{run_dir} was trained with different {section} settings ({getattr(old, section)}); "
                                f"resume it with the same CONFIG, or start a new run with RUN=runs/<new name>")
    if saved["tokenizer"] != prepared.tokenizer.to_str():
        raise TrainingError(f"the data now gives a different vocabulary than the one {run_dir} was trained with; "
                            f"resume with the same corpus (DATA=) and data settings, or start a new run")
    model.load_state_dict(saved["model"])
    if "optimizer" in saved:
        optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and "scaler" in saved:
        scaler.load_state_dict(saved["scaler"])
    if rt.is_main:
        runtime.set_rng_state(saved["rng"])
        save_config(config, run_dir / "config.yaml")
    state = TrainState(**saved["state"])
    if rt.is_main:
        log.info(f"resuming {run_dir} from {path.name}: step {state.step}, epoch {state.epoch}, "
                 f"{state.seconds / 60:.1f} min trained")
    return state


def _stop_reason(cfg, state: TrainState, stop: StopRequest, bad_steps: int, rt) -> str | None:
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


def _agree(reason: str | None, rt) -> str | None:
    """Data-parallel ranks stop together: any rank's reason stops all (one tiny all-reduce a step)."""
    if not rt.distributed:
        return reason
    flag = torch.tensor([1.0 if reason else 0.0])
    dist.all_reduce(flag)
    return reason or ("another rank stopped" if flag.item() > 0 else None)


def _progress(cfg, state: TrainState, rt):
    if not (rt.is_main and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.max_steps or None, initial=state.step, unit="step", dynamic_ncols=True)


def _writer(run_dir: Path, config: Config, state: TrainState):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb"))
    if state.step == 0:
        flat = {f"{section}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                for section, values in to_plain(config.to_dict()).items() for k, v in values.items()}
        writer.add_hparams(flat, {"valid/best_bleu": 0.0}, run_name=".")
    return writer


def _log_train(writer, run_dir: Path, state: TrainState, interval: dict, last: dict, bar,
               budget_minutes: float) -> None:
    loss = interval["loss"] / interval["tgt_tokens"]
    ppl = math.exp(min(interval["nll"] / interval["tgt_tokens"], 50))
    tokens_per_sec = interval["tokens"] / max(interval["time"], 1e-9)
    for tag, value in (("loss", loss), ("ppl", ppl), ("lr", last["lr"]), ("grad_norm", last["grad_norm"]),
                       ("tokens_per_sec", tokens_per_sec)):
        writer.add_scalar(f"train/{tag}", value, state.step)
    _append_log(run_dir, {"step": state.step, "epoch": state.epoch, "minutes": round(state.seconds / 60, 3),
                          "loss": loss, "ppl": ppl, "lr": last["lr"], "grad_norm": last["grad_norm"],
                          "tokens_per_sec": tokens_per_sec})
    if bar is not None:
        left = {"left": f"{max(0.0, budget_minutes - state.seconds / 60):.1f}min"} if budget_minutes else {}
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{last['lr']:.2e}", tok_s=f"{tokens_per_sec:,.0f}", **left, refresh=False)
    else:
        log.info(f"step {state.step} | epoch {state.epoch + 1} | loss {loss:.3f} | ppl {ppl:.2f} | lr {last['lr']:.2e} "
                 f"| grad {last['grad_norm']:.2f} | {tokens_per_sec:,.0f} tok/s | {state.seconds / 60:.1f} min")


def _append_log(run_dir: Path, row: dict) -> None:
    with open(run_dir / "train_log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _log_samples(writer, prepared: Prepared, hyps: list[str], step: int, n: int = 5) -> None:
    valid = prepared.valid
    rows = ["| source | reference | hypothesis |", "|---|---|---|"]
    rows += [f"| {valid.src_text[i]} | {valid.tgt_text[i]} | {hyps[i]} |" for i in range(min(n, len(hyps)))]
    writer.add_text("valid/samples", "\n".join(rows), step)


def _log_attention(writer, model: Transformer, prepared: Prepared, rt, step: int) -> None:
    """Heatmaps (mean over heads) of each layer's attention for the first validation sentence."""
    valid = prepared.valid
    batch = collate(valid.src[:1], valid.tgt[:1], [0]).to(rt.device)
    model.keep_attention_weights(True)
    try:
        with torch.no_grad():
            model(batch.src, batch.src_pad, batch.tgt_in)
        for kind, layers in (("encoder_self", [l.self_attn for l in model.encoder]),
                             ("decoder_self", [l.self_attn for l in model.decoder]),
                             ("cross", [l.cross_attn for l in model.decoder])):
            for i, attn in enumerate(layers):
                writer.add_image(f"attention/{kind}/layer_{i + 1}", heatmap(attn.weights[0].mean(0)), step,
                                 dataformats="HWC")
    finally:
        model.keep_attention_weights(False)


def heatmap(weights: torch.Tensor, cell: int = 12):
    """(Tq, Tk) weights in [0, 1] -> an RGB image (uint8, HWC), dark blue (0) to yellow (1)."""
    anchors = torch.tensor([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]],
                           dtype=torch.float32)  # plasma colormap stops
    weights = weights.detach().float().cpu()  # the colormap lives on the CPU, the model may not
    x = (weights.clamp(0, 1) / weights.max().clamp(min=1e-9)) * (len(anchors) - 1)
    low = x.floor().long().clamp(max=len(anchors) - 2)
    frac = (x - low)[..., None]
    rgb = anchors[low] * (1 - frac) + anchors[low + 1] * frac  # (Tq, Tk, 3)
    rgb = rgb.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return rgb.round().to(torch.uint8).numpy()
