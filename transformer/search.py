"""Greedy decoding and batched beam search (Sec. 6.1) over a key/value cache.

"We used beam search with a beam size of 4 and length penalty alpha = 0.6 ... We set the maximum
output length during inference to input length + 50, but terminate early when possible."
The length penalty is GNMT's (Wu et al., 2016): lp(Y) = ((5 + |Y|) / 6)^alpha, and hypotheses are
ranked by log P(Y | X) / lp(Y), where |Y| counts the generated tokens including </s>.

With `use_cache` (the default) each step feeds only the newest token: decoder self-attention keys
and values are appended to the cache, and the encoder output is projected to cross-attention keys
and values once per sentence. Without it, every step recomputes the whole prefix (for tests and
benchmarks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import Transformer
from .tokenizer import BOS, EOS, PAD


@dataclass
class Hypothesis:
    tokens: list[int]  # without <s> and </s>
    score: float  # log P(Y | X), </s> included
    normalized: float  # score / lp(Y)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT: lp(Y) = ((5 + |Y|) / 6)^alpha."""
    return ((5 + length) / 6) ** alpha


def max_output_lengths(src_pad: Tensor, max_extra_len: int, model: Transformer) -> Tensor:
    """Per sentence: input length + max_extra_len generated tokens (before </s>), within the PE table."""
    src_len = (~src_pad).sum(1) - 1  # the source ends in </s>
    return (src_len + max_extra_len).clamp(max=model.pe.size(0) - 1)


def only_eos(lprobs: Tensor, rows: Tensor) -> None:
    """In place: the selected rows (first dimension) may only end, with probability 1."""
    lprobs[rows] = float("-inf")
    lprobs[rows, ..., EOS] = 0.0


class _Stepper:
    """Next-token log-probabilities for rows of hypotheses, with or without the cache."""

    def __init__(self, model: Transformer, memory: Tensor, src_pad: Tensor, use_cache: bool):
        self.model, self.memory, self.src_pad = model, memory, src_pad
        self.cache = model.new_cache() if use_cache else None

    def __call__(self, tokens: Tensor) -> Tensor:
        """tokens (N, t) -> log-probabilities (N, V) of token t+1, in float32."""
        new = tokens[:, -1:] if self.cache is not None else tokens
        logits = self.model.decode(new, self.memory, self.src_pad, self.cache)[:, -1]
        lprobs = F.log_softmax(logits.float(), dim=-1)
        lprobs[:, PAD] = lprobs[:, BOS] = float("-inf")  # never generated
        return lprobs

    def select(self, rows: Tensor) -> None:
        """Keep (and reorder) hypothesis rows."""
        self.memory, self.src_pad = self.memory.index_select(0, rows), self.src_pad.index_select(0, rows)
        if self.cache is not None:
            self.cache.select(rows)


@torch.no_grad()
def greedy(model: Transformer, src: Tensor, src_pad: Tensor, max_extra_len: int = 50,
           use_cache: bool = True) -> list[Hypothesis]:
    """Pick the most probable token at each step. src (B, S) -> one hypothesis per sentence."""
    B = src.size(0)
    limit = max_output_lengths(src_pad, max_extra_len, model)  # (B,)
    step = _Stepper(model, model.encode(src, src_pad), src_pad, use_cache)
    tokens = torch.full((B, 1), BOS, dtype=torch.long, device=src.device)
    scores = torch.zeros(B, device=src.device)
    active = torch.arange(B, device=src.device)  # sentences still decoding
    results: list[Hypothesis | None] = [None] * B
    for t in range(1, int(limit.max()) + 2):  # t = tokens generated after this step, </s> included
        lprobs = step(tokens)  # (n, V)
        at_limit = t > limit[active]  # only </s> may follow the longest allowed output
        only_eos(lprobs, at_limit)
        best, choice = lprobs.max(dim=-1)
        scores[active] += best
        tokens = torch.cat([tokens, choice[:, None]], dim=1)
        done = choice == EOS
        for row in done.nonzero().flatten().tolist():
            sentence = int(active[row])
            results[sentence] = Hypothesis(tokens[row, 1:-1].tolist(), float(scores[sentence]), float(scores[sentence]))
        if done.all():
            break
        keep = (~done).nonzero().flatten()
        if len(keep) < len(active):
            active, tokens = active[keep], tokens[keep]
            step.select(keep)
    return results


@torch.no_grad()
def beam_search(model: Transformer, src: Tensor, src_pad: Tensor, beam_size: int = 4, alpha: float = 0.6,
                max_extra_len: int = 50, n_best: int = 1, use_cache: bool = True) -> list[list[Hypothesis]]:
    """Batched beam search. src (B, S) -> the n_best hypotheses of each sentence, best first.

    A sentence is finished once `beam_size` hypotheses have ended in </s>; finished sentences
    leave the batch so later steps only compute live ones.
    """
    B, K, device = src.size(0), beam_size, src.device
    limit = max_output_lengths(src_pad, max_extra_len, model)  # (B,)
    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,): sentence of each row
    memory = model.encode(src, src_pad)
    step = _Stepper(model, memory.index_select(0, rows), src_pad.index_select(0, rows), use_cache)
    tokens = torch.full((B * K, 1), BOS, dtype=torch.long, device=device)  # (n*K, t)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    active = torch.arange(B, device=device)  # (n,) sentences still searching
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    for t in range(1, int(limit.max()) + 2):
        n = len(active)
        lprobs = step(tokens).view(n, K, -1)  # (n, K, V)
        V = lprobs.size(-1)
        at_limit = t > limit[active]  # (n,)
        only_eos(lprobs, at_limit)
        candidates = (scores[:, :, None] + lprobs).view(n, K * V)
        top_scores, top = candidates.topk(2 * K, dim=1)  # (n, 2K): at most K of them end in </s>
        beam, token = top // V, top % V
        # Hypotheses ending in </s> among the K best candidates are finished.
        ends = (token == EOS) & torch.isfinite(top_scores)
        ends[:, K:] = False
        for i, j in ends.nonzero().tolist():
            sentence = int(active[i])
            if len(finished[sentence]) < K:
                prefix = tokens[i * K + int(beam[i, j]), 1:].tolist()
                score = float(top_scores[i, j])
                finished[sentence].append(Hypothesis(prefix, score, score / length_penalty(t, alpha)))
        # The K best candidates that do not end go on.
        go_on = token != EOS
        keep = go_on & (go_on.cumsum(dim=1) <= K)  # (n, 2K), exactly K per row
        beam, token, new_scores = beam[keep].view(n, K), token[keep].view(n, K), top_scores[keep].view(n, K)
        alive = torch.tensor([len(finished[int(s)]) < K for s in active], device=device)
        if not alive.any():
            break
        origin = (torch.arange(n, device=device)[:, None] * K + beam)[alive].flatten()  # rows to continue
        tokens = torch.cat([tokens[origin], token[alive].flatten()[:, None]], dim=1)
        scores, active = new_scores[alive], active[alive]
        step.select(origin)
    results = []
    for hyps in finished:
        hyps.sort(key=lambda h: h.normalized, reverse=True)
        results.append(hyps[:n_best])
    return results
