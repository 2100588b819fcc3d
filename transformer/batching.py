"""Token-budget batches of sentence pairs grouped by length (Sec. 5.1).

"Sentence pairs were batched together by approximate sequence length. Each training batch
contained a set of sentence pairs containing approximately 25000 source tokens and 25000 target
tokens." Here `max_tokens` bounds the padded size of each side, batch size x longest sequence,
so the budget is what the device really holds.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
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
        pin = torch.device(device).type == "cuda"  # a copy from pinned memory does not wait for the GPU's queue
        move = lambda t: (t.pin_memory() if pin else t).to(device, non_blocking=True)
        return Batch(move(self.src), move(self.src_pad), move(self.tgt_in), move(self.tgt_out), self.src_tokens,
                     self.tgt_tokens)


def pad(seqs, bos: bool = False, eos: bool = False) -> Tensor:
    """Right-pad id sequences (lists or arrays) into a (B, L) tensor, with <s> before / </s> after each."""
    lengths = [len(seq) for seq in seqs]
    out = np.full((len(seqs), max(lengths) + bos + eos), PAD, dtype=np.int64)
    for row, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
        out[row, bos : bos + n] = seq
        if bos:
            out[row, 0] = BOS
        if eos:
            out[row, bos + n] = EOS
    return torch.from_numpy(out)


def collate(src, tgt=None) -> Batch:
    """Build a Batch from subword ids without specials (lists or arrays); `tgt` None to translate."""
    source = pad(src, eos=True)
    tgt = tgt if tgt is not None else [[] for _ in src]
    tgt_in, tgt_out = pad(tgt, bos=True), pad(tgt, eos=True)
    return Batch(source, source == PAD, tgt_in, tgt_out, int((source != PAD).sum()), int((tgt_out != PAD).sum()))


def make_batches(src_lens, tgt_lens, max_tokens: int, seed: int | None = None) -> list[np.ndarray]:
    """Index arrays whose padded size is at most `max_tokens` on each side (lengths include </s> / <s>).

    Pairs are sorted by (source, target) length so each batch holds similar lengths; with a seed,
    ties are broken at random and the batch order is shuffled: one seed, one order. Lengths are
    arrays (or lists): the sort and each batch's extent are vectorized, so a corpus of millions of
    pairs is batched in seconds.
    """
    src, tgt = np.asarray(src_lens), np.asarray(tgt_lens)
    # On millions of pairs every array here is large, and the allocator keeps what the batching frees:
    # 32-bit indices, lengths in the smallest type that holds them (uint8 up to 254 tokens), and no
    # temporary of the corpus's size longer than its use.
    order = np.arange(len(src), dtype=np.int32)
    rng = random.Random(seed)
    if seed is not None:  # random tie-breaking for the stable sorts below; a memoryview shuffles in place
        rng.shuffle(memoryview(order))
    for lengths in (tgt, src):  # stable sorts by the minor key, then the major: sorted by (source, target)
        order = _counting_sort(order, lengths)
    small = np.min_scalar_type(int(max(src.max(initial=0), tgt.max(initial=0))) + 1)
    s, t = src[order].astype(small, copy=False), tgt[order].astype(small, copy=False)  # (pairs,) sorted
    s += 1  # + </s>
    t += 1  # + <s> in the input, + </s> in the output
    too_long = np.flatnonzero(np.maximum(s, t) > max_tokens)
    if too_long.size:
        i = too_long[0]
        raise ConfigError(f"a pair of {s[i]} / {t[i]} tokens does not fit max_tokens={max_tokens}; raise "
                          f"train.max_tokens or lower data.max_len")
    # A batch from position a takes pairs a..k while (k - a + 1) x max(longest source, longest target)
    # fits: sources are sorted, so that product never falls as k grows, and its end is a searchsorted.
    ends, a = [], 0
    while a < len(order):
        window = min(len(order) - a, max_tokens // int(s[a]))  # every later source is at least s[a] long
        padded = np.arange(1, window + 1) * np.maximum(s[a : a + window], np.maximum.accumulate(t[a : a + window]))
        a += int(np.searchsorted(padded, max_tokens, side="right"))
        ends.append(a)
    batches = np.split(order, ends[:-1])
    if seed is not None:
        rng.shuffle(batches)
    return batches


def _counting_sort(order: np.ndarray, lengths: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """`order`, a permutation of every pair, stably sorted by `lengths[order]`, a chunk at a time: numpy's
    argsort would make 64-bit indices and a buffer of the corpus's size (576 MB on 36M pairs)."""
    counts = np.zeros(int(lengths.max(initial=0)) + 1, np.int64)  # (L,) pairs of each length
    for a in range(0, len(lengths), chunk):
        counts += np.bincount(lengths[a : a + chunk], minlength=len(counts))
    free = np.cumsum(counts) - counts  # (L,) where the next pair of each length goes
    out = np.empty_like(order)
    for a in range(0, len(order), chunk):
        part = order[a : a + chunk]
        by_length = np.argsort(lengths[part], kind="stable")
        key = lengths[part[by_length]]  # (chunk,) sorted
        here = np.bincount(key, minlength=len(counts))
        # each pair goes to its length's next place, plus its rank among this chunk's pairs of that length
        out[free[key] + np.arange(len(key)) - (np.cumsum(here) - here)[key]] = part[by_length]
        free += here
    return out


def padding_fraction(batches: list[np.ndarray], src_lens, tgt_lens) -> float:
    """Share of padding among all source and target positions of these batches."""
    src, tgt = np.asarray(src_lens), np.asarray(tgt_lens)
    real = padded = 0
    for a in range(0, len(batches), 10_000):  # over every batch at once, each copy below would be the corpus's size
        part = batches[a : a + 10_000]
        sizes = np.array([len(b) for b in part])
        starts = np.cumsum(sizes) - sizes
        order = np.concatenate(part)
        for side in (src[order], tgt[order]):
            real += int(side.sum()) + len(order)  # + </s> / <s> each
            padded += int((sizes * (np.maximum.reduceat(side, starts).astype(np.int64) + 1)).sum())  # (batches,)
    return 1 - real / padded


def shard(batches: list[np.ndarray], world_size: int) -> list[np.ndarray]:
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


@dataclass
class Step:
    """One optimizer step of an epoch, as one rank holds it."""
    batches: list[np.ndarray]  # this rank's micro-batches: indices of pairs
    tgt_tokens: int  # target tokens (+ </s> each) of the step's micro-batches on every rank: the loss's divisor


def epoch_steps(src_lens, tgt_lens, max_tokens: int, seed: int, world_size: int = 1, accumulate: int = 1,
                rank: int = 0) -> list[Step]:
    """One epoch's optimizer steps: each `world_size x accumulate` micro-batches, of which rank r holds
    group[r::world_size]. Every rank computes the same batches from the same seed and keeps its share
    only: on 36M pairs an epoch's batches are 144 MB of indices.
    """
    batches = shard(make_batches(src_lens, tgt_lens, max_tokens, seed=seed), world_size)
    tgt, per_step = np.asarray(tgt_lens), world_size * accumulate
    steps = []
    for a in range(0, len(batches), per_step):
        group = batches[a : a + per_step]
        mine = group[rank::world_size]
        if world_size > 1:  # views would keep the whole epoch's indices alive
            mine = [batch.copy() for batch in mine]
        steps.append(Step(mine, sum(int(tgt[batch].sum()) + len(batch) for batch in group)))
    return steps
