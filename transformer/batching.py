"""Token-budget batches of sentence pairs grouped by length (Sec. 5.1).

"Sentence pairs were batched together by approximate sequence length. Each training batch
contained a set of sentence pairs containing approximately 25000 source tokens and 25000 target
tokens." Here `max_tokens` bounds the padded size of each side, batch size x longest sequence,
so the budget is what the device really holds.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import ConfigError
from .tokenizer import BOS, EOS, PAD


@dataclass
class Batch:
    src: Tensor  # (B, S) source ids + </s>, right-padded
    src_pad: Tensor  # (B, S) True at padding
    tgt_in: Tensor  # (B, T) <s> + y: the decoder's input
    tgt_out: Tensor  # (B, T) y + </s>: what it must predict; PAD where padded
    src_tokens: int  # non-padding tokens
    tgt_tokens: int

    def to(self, device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)
        return Batch(move(self.src), move(self.src_pad), move(self.tgt_in), move(self.tgt_out), self.src_tokens,
                     self.tgt_tokens)


def pad(seqs: list[list[int]]) -> Tensor:
    """Right-pad id lists into a (B, L) tensor."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def collate(src: list[list[int]], tgt: list[list[int]] | None = None) -> Batch:
    """Build a Batch from subword ids without specials; `tgt` None for translation-only batches."""
    source = pad([s + [EOS] for s in src])
    tgt = tgt if tgt is not None else [[] for _ in src]
    tgt_in, tgt_out = pad([[BOS] + t for t in tgt]), pad([t + [EOS] for t in tgt])
    return Batch(source, source == PAD, tgt_in, tgt_out, int((source != PAD).sum()), int((tgt_out != PAD).sum()))


def make_batches(src_lens: list[int], tgt_lens: list[int], max_tokens: int, seed: int | None = None) -> list[list[int]]:
    """Index lists whose padded size is at most `max_tokens` on each side (lengths include </s> / <s>).

    Pairs are sorted by (source, target) length so each batch holds similar lengths; with a seed,
    ties are broken at random and the batch order is shuffled: one seed, one order.
    """
    order = list(range(len(src_lens)))
    rng = random.Random(seed)
    if seed is not None:
        rng.shuffle(order)  # random tie-breaking for the stable sort below
    order.sort(key=lambda i: (src_lens[i], tgt_lens[i]))
    batches, current, longest_src, longest_tgt = [], [], 0, 0
    for i in order:
        s, t = src_lens[i] + 1, tgt_lens[i] + 1
        if max(s, t) > max_tokens:
            raise ConfigError(f"a pair of {s} / {t} tokens does not fit max_tokens={max_tokens}; raise "
                              f"train.max_tokens or lower data.max_len")
        ls, lt = max(longest_src, s), max(longest_tgt, t)
        if current and (len(current) + 1) * max(ls, lt) > max_tokens:
            batches.append(current)
            current, ls, lt = [], s, t
        current.append(i)
        longest_src, longest_tgt = ls, lt
    if current:
        batches.append(current)
    if seed is not None:
        rng.shuffle(batches)
    return batches


def padding_fraction(batches: list[list[int]], src_lens: list[int], tgt_lens: list[int]) -> float:
    """Share of padding among all source and target positions of these batches."""
    real = padded = 0
    for batch in batches:
        real += sum(src_lens[i] + tgt_lens[i] + 2 for i in batch)
        padded += len(batch) * (max(src_lens[i] for i in batch) + max(tgt_lens[i] for i in batch) + 2)
    return 1 - real / padded


def shard(batches: list[list[int]], world_size: int) -> list[list[int]]:
    """Split batches in two until their count divides by `world_size`, so ranks run equal steps.

    Rank r then takes batches[r::world_size]: disjoint shards that together cover every pair.
    """
    batches = list(batches)
    while len(batches) % world_size:
        largest = max(range(len(batches)), key=lambda b: len(batches[b]))
        if len(batches[largest]) < 2:
            raise ConfigError(f"too few sentence pairs to give {world_size} ranks a batch each; use fewer processes "
                              f"(NPROC=)")
        half = len(batches[largest]) // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
    return batches


def step_groups(src_lens: list[int], tgt_lens: list[int], max_tokens: int, seed: int, world_size: int = 1,
                accumulate: int = 1) -> list[list[list[int]]]:
    """One epoch's optimizer steps: each the `world_size x accumulate` micro-batches of one step.

    Every rank computes the same groups from the same seed; rank r trains on group[r::world_size].
    """
    batches = shard(make_batches(src_lens, tgt_lens, max_tokens, seed=seed), world_size)
    per_step = world_size * accumulate
    return [batches[i : i + per_step] for i in range(0, len(batches), per_step)]
