"""Text in, text out: a Translator built from a checkpoint alone (its config and tokenizer ride along).

Lines come in as bytes: invalid UTF-8 is replaced and reported, a blank line gives a blank line,
and a line longer than the model allows is truncated with a warning, so the output always has
one line per input line.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO, TextIO

import torch

from . import checkpoint
from .batching import collate, make_batches
from .config import Config, ConfigError, from_dict, merge, parse_overrides
from .errors import InputError
from .model import Transformer
from .search import beam_search, greedy
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


class Translator:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, config: Config, step: int = 0):
        self.model, self.tokenizer, self.config, self.step = model.eval(), tokenizer, config, step
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, overrides: list[str] = ()) -> Translator:
        """`overrides` change decode settings only, e.g. ["decode.beam_size=5", "decode.length_penalty=1.0"]."""
        changes = parse_overrides(overrides)
        fixed = sorted(set(changes) - {"decode"})
        if fixed:
            raise ConfigError(f"only decode.* settings can change after training; {', '.join(fixed)} "
                              f"settings are fixed by the checkpoint")
        state = checkpoint.load(path)
        if "tokenizer" not in state or "config" not in state:
            raise checkpoint.CheckpointError(f"{path} lacks its config or tokenizer; it cannot translate alone")
        config, tokenizer = from_dict(merge(state["config"], changes)), Tokenizer.from_str(state["tokenizer"])
        model = Transformer(config.model, tokenizer.vocab_size)
        model.load_state_dict(state["model"])
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), tokenizer, config, state.get("state", {}).get("step", 0))

    @property
    def max_source_tokens(self) -> int:
        return self.model.pe.size(0) - 1  # room for </s>

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
    def translate_ids(self, src_ids: list[list[int]], beam_size: int | None = None, n_best: int = 1,
                      use_cache: bool = True):
        """Hypotheses for each source (empty sources give none), in input order.

        Sentences are sorted by length and batched by `decode.max_tokens` source tokens
        (padded, times the beam), then put back in their original order.
        """
        cfg = self.config.decode
        beam = cfg.beam_size if beam_size is None else beam_size
        results: list = [[] for _ in src_ids]
        todo = [i for i, seq in enumerate(src_ids) if seq]
        lengths = [len(src_ids[i]) for i in todo]
        budget = max(cfg.max_tokens // max(beam, 1), max(lengths, default=0) + 1)
        for batch_rows in make_batches(lengths, lengths, budget):
            indices = [todo[r] for r in batch_rows]
            batch = collate([src_ids[i] for i in indices]).to(self.device)
            if beam <= 1:
                hyps = [[h] for h in greedy(self.model, batch.src, batch.src_pad, cfg.max_extra_len, use_cache)]
            else:
                hyps = beam_search(self.model, batch.src, batch.src_pad, beam, cfg.length_penalty,
                                   cfg.max_extra_len, n_best, use_cache)
            for i, h in zip(indices, hyps, strict=True):
                results[i] = h
        return results

    def translate(self, sentences: list[str]) -> list[str]:
        """One detokenized translation per input sentence; a blank line gives an empty line."""
        hyps = self.translate_ids(self.encode([s.strip() for s in sentences]))
        return [self.tokenizer.decode(h[0].tokens) if h else "" for h in hyps]

    def translate_stream(self, lines: list[str], out: TextIO, chunk: int = 2000) -> None:
        """Translate `chunk` lines at a time, writing (and flushing) each chunk as it is done."""
        for start in range(0, len(lines), chunk):
            for hyp in self.translate(lines[start : start + chunk]):
                out.write(hyp + "\n")
            out.flush()


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
