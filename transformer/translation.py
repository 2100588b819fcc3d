"""Text in, text out: a Translator built from a checkpoint alone (its config and tokenizer ride along),
or from several (an ensemble sharing one vocabulary).

Lines come in as bytes: invalid UTF-8 is replaced and reported, a blank line gives a blank line,
and a line longer than the model allows is truncated with a warning, so the output always has
one line per input line. With `decode.n_best` > 1 (or `decode.scores`) each input line gives
n_best output lines `line ||| text ||| score`, line counted from 0, best first; the score is what
ranks them: log P(Y | X) / lp(Y) in beam search, log P(Y | X) in greedy decoding and sampling.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, TextIO

import torch

from . import checkpoint, runtime
from .batching import collate, make_batches
from .config import Config, ConfigError, from_dict, merge, parse_overrides
from .errors import InputError
from .model import Transformer
from .search import Models, Sampling, as_list, beam_search, greedy
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


class Translator:
    def __init__(self, model: Models, tokenizer: Tokenizer, config: Config, step: int = 0, tuned_on: str = ""):
        self.models = [m.eval() for m in as_list(model)]
        self.model, self.tokenizer, self.config, self.step = self.models[0], tokenizer, config, step
        self.tuned_on = tuned_on  # the split the checkpoint's length penalty was chosen on, if it was
        self.device = next(self.model.parameters()).device
        runtime.bound_onednn_caches()  # a long stdin session meets many (B, T) shapes too

    @classmethod
    def from_checkpoint(cls, path: str | Path | Sequence[str | Path], device: str | None = None,
                        overrides: list[str] = ()) -> Translator:
        """`overrides` change decode settings only, e.g. ["decode.beam_size=5", "decode.length_penalty=1.0"].

        Several paths make an ensemble; the first one's decode settings are used."""
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        return cls.from_states([checkpoint.load(p) for p in paths], paths, device, overrides)

    @classmethod
    def from_states(cls, states: list[dict], paths: list, device: str | None = None,
                    overrides: list[str] = ()) -> Translator:
        """As from_checkpoint, for checkpoints already loaded (`paths` name them in errors)."""
        for p, state in zip(paths, states, strict=True):
            if "tokenizer" not in state or "config" not in state:
                raise checkpoint.CheckpointError(f"{p} lacks its config or tokenizer; it cannot translate alone")
            if state["tokenizer"] != states[0]["tokenizer"]:
                raise checkpoint.CheckpointError(f"{p} and {paths[0]} have different vocabularies; an ensemble needs "
                                                 f"checkpoints trained on the same data with the same tokenizer")
        first, tokenizer = states[0], Tokenizer.from_str(states[0]["tokenizer"])
        config, tuned_on = decode_config(first["config"], first.get("decode", {}), overrides)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        models = []
        for state in states:
            model = Transformer(from_dict(state["config"]).model, tokenizer.vocab_size)
            model.load_state_dict(state["model"])
            models.append(at_precision(model.to(device), config.decode.precision))
        return cls(models, tokenizer, config, first.get("state", {}).get("step", 0), tuned_on)

    @property
    def max_source_tokens(self) -> int:
        return self.config.model.max_positions - 1  # room for </s>

    def encode(self, sentences: list[str]) -> list[list[int]]:
        """Subword ids per sentence, truncated (with a warning) where the model cannot take them."""
        ids = self.tokenizer.encode_batch(sentences)
        limit = self.max_source_tokens
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                log.warning(f"line {i + 1}: {len(seq)} tokens is longer than the model allows; "
                            f"translating the first {limit}")
                ids[i] = seq[:limit]
        return ids

    @torch.no_grad()
    def translate_ids(self, src_ids: list[list[int]], beam_size: int | None = None, n_best: int | None = None,
                      use_cache: bool = True):
        """The `n_best` hypotheses of each source, best first (empty sources give none), in input order.

        Sentences are sorted by length and batched by `decode.max_tokens` source tokens
        (padded, times the beam or the samples), then put back in their original order.
        """
        cfg = self.config.decode
        beam = cfg.beam_size if beam_size is None else beam_size
        n_best = cfg.n_best if n_best is None else n_best
        sampling = None
        if cfg.sampling:
            generator = torch.Generator(self.device).manual_seed(cfg.seed)
            sampling = Sampling(cfg.temperature, cfg.top_k, cfg.top_p, generator)
        width = n_best if sampling else max(beam, 1)
        results: list = [[] for _ in src_ids]
        todo = [i for i, seq in enumerate(src_ids) if seq]
        lengths = [len(src_ids[i]) for i in todo]
        budget = max(cfg.max_tokens // width, max(lengths, default=0) + 1)
        for batch_rows in make_batches(lengths, lengths, budget):
            indices = [todo[r] for r in batch_rows]
            batch = collate([src_ids[i] for i in indices]).to(self.device)
            if sampling:  # n_best samples of each sentence, most probable first
                drawn = greedy(self.models, batch.src, batch.src_pad, cfg.max_extra_len, use_cache, sampling, n_best)
                hyps = [sorted(drawn[k * n_best : (k + 1) * n_best], key=lambda h: h.score, reverse=True)
                        for k in range(len(indices))]
            elif beam <= 1:
                hyps = [[h] for h in greedy(self.models, batch.src, batch.src_pad, cfg.max_extra_len, use_cache)]
            else:
                hyps = beam_search(self.models, batch.src, batch.src_pad, beam, cfg.length_penalty,
                                   cfg.max_extra_len, n_best, use_cache)
            for i, h in zip(indices, hyps, strict=True):
                results[i] = h
        return results

    def translate(self, sentences: list[str]) -> list[str]:
        """One detokenized translation per input sentence; a blank line gives an empty line."""
        return [candidates[0][0] for candidates in self.translate_scored(sentences, n_best=1)]

    def translate_scored(self, sentences: list[str], n_best: int | None = None) -> list[list[tuple[str, float]]]:
        """The `n_best` (text, score) candidates of each sentence, best first; ("", 0.0) for a blank line."""
        hyps = self.translate_ids(self.encode([s.strip() for s in sentences]), n_best=n_best)
        return [[(self.tokenizer.decode(h.tokens), h.normalized) for h in found] or [("", 0.0)] for found in hyps]

    def output_lines(self, sentences: list[str], first_line: int = 0) -> list[str]:
        """What `make translate` writes: a translation per sentence, or `line ||| text ||| score` lines."""
        cfg = self.config.decode
        if cfg.n_best == 1 and not cfg.scores:
            return self.translate(sentences)
        return [f"{first_line + i} ||| {text} ||| {score:.4f}"
                for i, candidates in enumerate(self.translate_scored(sentences)) for text, score in candidates]

    def translate_stream(self, lines: list[str], out: TextIO, chunk: int = 2000) -> None:
        """Translate `chunk` lines at a time, writing (and flushing) each chunk as it is done."""
        for start in range(0, len(lines), chunk):
            for line in self.output_lines(lines[start : start + chunk], start):
                out.write(line + "\n")
            out.flush()


def decode_config(saved: dict, tuned: dict, overrides: list[str]) -> tuple[Config, str]:
    """A checkpoint's config with its tuned decode settings (`state["decode"]`, tuning.py), then the
    `decode.*` overrides; and the split the length penalty was chosen on, unless overridden."""
    changes = parse_overrides(overrides)
    fixed = sorted(set(changes) - {"decode"})
    if fixed:
        raise ConfigError(f"only decode.* settings can change after training; {', '.join(fixed)} "
                          f"settings are fixed by the checkpoint")
    config = from_dict(merge(merge(saved, {"decode": tuned.get("settings", {})}), changes))
    return config, "" if "length_penalty" in changes.get("decode", {}) else tuned.get("split", "")


def at_precision(model: Transformer, precision: str) -> Transformer:
    """The model for decoding in `precision`: bfloat16 weights, or int8 linear layers whose activations
    are quantized on the fly (torch's dynamic quantization; the shared pre-softmax matrix stays float)."""
    if precision == "bfloat16":
        return model.to(torch.bfloat16)
    if precision == "int8":
        with warnings.catch_warnings():  # torch.ao.quantization warns that it moves to torchao
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model


def read_lines(stream: BinaryIO) -> list[str]:
    """Decode bytes line by line; invalid UTF-8 is replaced (and reported), never a crash or a lost line."""
    lines = []
    for number, raw in enumerate(stream, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            log.warning(f"line {number}: invalid UTF-8, undecodable bytes replaced by U+FFFD")
        lines.append(line.rstrip("\r\n"))
    return lines


def read_file(path: str | Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            return read_lines(f)
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror}") from None
