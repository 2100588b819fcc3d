"""What a training run shows (rank 0 only): TensorBoard, `train_log.jsonl`, and progress.

    tb/                train/{loss,ppl,lr,grad_norm,tokens_per_sec,memory_gib}, valid/{loss,ppl,bleu,best_bleu},
                       validation samples as text, attention pictures with their tokens, hyperparameters
    train_log.jsonl    the same numbers, one JSON object a line
    hyps/              each validation's greedy translations

On a terminal a progress bar shows the loss, rate and time left; elsewhere a log line every
`train.log_every` steps.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Config, to_plain
from .runtime import resident_gib

if TYPE_CHECKING:
    from .data import Prepared
    from .model import Transformer
    from .training import StepResult, TrainState, Validation

log = logging.getLogger(__name__)


@dataclass
class Interval:
    """Sums over the steps since the last training log line."""

    loss: float = 0.0
    nll: float = 0.0
    tokens: int = 0
    tgt_tokens: int = 0
    seconds: float = 0.0
    steps: int = 0


class Monitor:
    def __init__(self, run_dir: Path, config: Config, state: TrainState):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir, self.config = run_dir, config
        _drop_cut_line(run_dir / "train_log.jsonl")
        self.writer = SummaryWriter(str(run_dir / "tb"))
        if state.step == 0:
            flat = {f"{section}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                    for section, values in to_plain(config.to_dict()).items() for k, v in values.items()}
            self.writer.add_hparams(flat, {"valid/best_bleu": 0.0}, run_name=".")
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=config.train.max_steps or None, initial=state.step, unit="step", dynamic_ncols=True)
        self.interval = Interval()

    def step(self, state: TrainState, result: StepResult, seconds: float) -> None:
        """Count one step (taken or skipped) that took `seconds`; log every `train.log_every` steps."""
        iv = self.interval
        if not result.skipped:
            iv.loss, iv.nll = iv.loss + result.loss, iv.nll + result.nll
            iv.tokens, iv.tgt_tokens = iv.tokens + result.tokens, iv.tgt_tokens + result.tgt_tokens
            iv.steps += 1
        iv.seconds += seconds
        if iv.steps and state.step % self.config.train.log_every == 0:
            self._log_interval(state, result)
            self.interval = Interval()
        if self.bar is not None:
            self.bar.update(0 if result.skipped else 1)

    def _log_interval(self, state: TrainState, last: StepResult) -> None:
        iv = self.interval
        loss = iv.loss / iv.tgt_tokens
        ppl = math.exp(min(iv.nll / iv.tgt_tokens, 50))
        tokens_per_sec = iv.tokens / max(iv.seconds, 1e-9)
        memory = resident_gib()
        for tag, value in (("loss", loss), ("ppl", ppl), ("lr", last.lr), ("grad_norm", last.grad_norm),
                           ("tokens_per_sec", tokens_per_sec), ("memory_gib", memory)):
            self.writer.add_scalar(f"train/{tag}", value, state.step)
        self._append({"step": state.step, "epoch": state.epoch, "minutes": round(state.seconds / 60, 3),
                      "loss": loss, "ppl": ppl, "lr": last.lr, "grad_norm": last.grad_norm,
                      "tokens_per_sec": tokens_per_sec, "memory_gib": round(memory, 3)})
        budget = self.config.train.max_minutes
        if self.bar is not None:
            left = {"left": f"{max(0.0, budget - state.seconds / 60):.1f}min"} if budget else {}
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{last.lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}", **left,
                                 refresh=False)
        else:
            log.info(f"step {state.step} | epoch {state.epoch + 1} | loss {loss:.3f} | ppl {ppl:.2f} | "
                     f"lr {last.lr:.2e} | grad {last.grad_norm:.2f} | {tokens_per_sec:,.0f} tok/s | "
                     f"{memory:.2f} GiB | {state.seconds / 60:.1f} min")

    def validation(self, state: TrainState, result: Validation, model: Transformer, data: Prepared,
                   seconds: float) -> None:
        """Scores, samples, hypotheses and attention pictures of one validation."""
        step, valid = state.step, data.valid
        self.writer.add_scalar("valid/loss", result.loss, step)
        self.writer.add_scalar("valid/ppl", result.ppl, step)
        row = {"step": step, "minutes": round(state.seconds / 60, 3), "valid_loss": result.loss,
               "valid_ppl": result.ppl}
        message = f"validation at step {step}: loss {result.loss:.3f}, ppl {result.ppl:.2f}"
        if result.bleu is not None:
            self.writer.add_scalar("valid/bleu", result.bleu, step)
            self.writer.add_scalar("valid/best_bleu", state.best_bleu, step)
            row["valid_bleu"] = result.bleu
            message += f", BLEU {result.bleu:.2f} (best {state.best_bleu:.2f})"
            samples = ["| source | reference | hypothesis |", "|---|---|---|"]
            samples += [f"| {valid.src_text[i]} | {valid.tgt_text[i]} | {result.hyps[i]} |"
                        for i in range(min(5, len(result.hyps)))]
            self.writer.add_text("valid/samples", "\n".join(samples), step)
            hyp_dir = self.run_dir / "hyps"
            hyp_dir.mkdir(parents=True, exist_ok=True)
            (hyp_dir / f"valid_step_{step:07d}.txt").write_text("".join(h + "\n" for h in result.hyps))
        self._attention(model, data, step)
        self.writer.flush()
        self._append(row)
        log.info(f"{message} [{seconds:.1f}s]")

    def _attention(self, model: Transformer, data: Prepared, step: int) -> None:
        """Every layer's attention (heads averaged) over the first validation pair, tokens on the axes."""
        from .pictures import attention_pictures

        for kind, figure in attention_pictures(model, data.tokenizer, data.valid.src[0], data.valid.tgt[0]).items():
            self.writer.add_figure(f"attention/{kind}", figure, step)  # closes the figure

    def _append(self, row: dict) -> None:
        with open(self.run_dir / "train_log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()


def _drop_cut_line(path: Path) -> None:
    """A last line cut short (the disk filled while writing it) is dropped before the run appends,
    so the log stays one JSON object a line. Truncating needs no free space."""
    if path.is_file():
        text = path.read_bytes()
        if text and not text.endswith(b"\n"):
            os.truncate(path, text.rfind(b"\n") + 1)

