"""Text in, text out: a Translator built from a checkpoint alone (its config and tokenizer ride along)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import checkpoint
from .batching import collate, make_batches
from .config import Config, ConfigError, from_dict, merge, parse_overrides
from .model import Transformer
from .search import beam_search, greedy
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


class Translator:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, config: Config, step: int = 0):
        self.model, self.tokenizer, self.config, self.step = model.eval(), tokenizer, config, step
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, overrides: list[str] = ()) -> "Translator":
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
            batch = collate([src_ids[i] for i in indices], None, indices).to(self.device)
            if beam <= 1:
                hyps = [[h] for h in greedy(self.model, batch.src, batch.src_pad, cfg.max_extra_len, use_cache)]
            else:
                hyps = beam_search(self.model, batch.src, batch.src_pad, beam, cfg.length_penalty,
                                   cfg.max_extra_len, n_best, use_cache)
            for i, h in zip(indices, hyps):
                results[i] = h
        return results

    def translate(self, sentences: list[str]) -> list[str]:
        """One detokenized translation per input sentence; a blank line gives an empty line."""
        hyps = self.translate_ids(self.encode([s.strip() for s in sentences]))
        return [self.tokenizer.decode(h[0].tokens) if h else "" for h in hyps]
