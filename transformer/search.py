"""Greedy decoding, sampling and batched beam search (Sec. 6.1) over a key/value cache, for one
model or an ensemble.

"We used beam search with a beam size of 4 and length penalty alpha = 0.6 ... We set the maximum
output length during inference to input length + 50, but terminate early when possible."
The length penalty is GNMT's (Wu et al., 2016): lp(Y) = ((5 + |Y|) / 6)^alpha, and hypotheses are
ranked by log P(Y | X) / lp(Y), where |Y| counts the generated tokens including </s>.

With `use_cache` (the default) each step feeds only the newest token: decoder self-attention keys
and values are appended to the cache, and the encoder output is projected to cross-attention keys
and values once per sentence. Without it, every step recomputes the whole prefix (for tests and
benchmarks).

An ensemble (several models with one vocabulary) predicts the mean of its models' log-probabilities,
renormalized: each step's distribution is their normalized geometric mean.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

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


def rerank(hyps: list[Hypothesis], alpha: float) -> list[Hypothesis]:
    """Ended hypotheses ranked by log P(Y | X) / lp(Y) with length penalty `alpha`, best first."""
    ranked = [replace(h, normalized=h.score / length_penalty(len(h.tokens) + 1, alpha)) for h in hyps]  # + </s>
    return sorted(ranked, key=lambda h: h.normalized, reverse=True)


Models = Transformer | Sequence[Transformer]  # one model, or an ensemble


def max_output_lengths(src_pad: Tensor, max_extra_len: int, models: list[Transformer]) -> Tensor:
    """Per sentence: input length + max_extra_len generated tokens (before </s>), within the PE tables."""
    src_len = (~src_pad).sum(1) - 1  # the source ends in </s>
    return (src_len + max_extra_len).clamp(max=min(m.pe.size(0) for m in models) - 1)


def only_eos(lprobs: Tensor, rows: Tensor) -> None:
    """In place: the selected rows (first dimension) may only end, with probability 1."""
    lprobs[rows] = float("-inf")
    lprobs[rows, ..., EOS] = 0.0


class _Stepper:
    """Next-token log-probabilities for rows of hypotheses, with or without the cache.

    Row i of the hypotheses translates source sentence rows[i]."""

    def __init__(self, models: list[Transformer], src: Tensor, src_pad: Tensor, rows: Tensor, use_cache: bool):
        self.models, self.src_pad = models, src_pad.index_select(0, rows)
        self.memories = [m.encode(src, src_pad).index_select(0, rows) for m in models]  # each (N, S, D)
        # A decoder whose positions see later ones (model.decoder_mask) recomputes the prefix every step.
        self.caches = [m.new_cache() if use_cache and m.config.decoder_mask == "causal" else None for m in models]

    def __call__(self, tokens: Tensor) -> Tensor:
        """tokens (N, t) -> log-probabilities (N, V) of token t+1, in float32."""
        lprobs = [F.log_softmax(m.decode(tokens if cache is None else tokens[:, -1:], memory, self.src_pad,
                                         cache)[:, -1].float(), dim=-1)
                  for m, memory, cache in zip(self.models, self.memories, self.caches, strict=True)]
        lprobs = lprobs[0] if len(lprobs) == 1 else F.log_softmax(torch.stack(lprobs).mean(0), dim=-1)
        lprobs[:, PAD] = lprobs[:, BOS] = float("-inf")  # never generated
        return lprobs

    def select(self, rows: Tensor) -> None:
        """Keep (and reorder) hypothesis rows."""
        self.memories = [memory.index_select(0, rows) for memory in self.memories]
        self.src_pad = self.src_pad.index_select(0, rows)
        for cache in self.caches:
            if cache is not None:
                cache.select(rows)


def as_list(models: Models) -> list[Transformer]:
    return [models] if isinstance(models, torch.nn.Module) else list(models)


@dataclass(frozen=True)
class Sampling:
    """Draw each token from the model's distribution: sharpened or flattened by `temperature` (0 picks
    the most probable token), cut to the `top_k` most probable tokens (0: all), then to the smallest
    set whose probability reaches `top_p` (nucleus sampling, Holtzman et al., 2020; 1: all)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    def __call__(self, lprobs: Tensor) -> Tensor:
        """lprobs (N, V) -> the drawn token of each row (N,)."""
        if self.temperature == 0:
            return lprobs.argmax(dim=-1)
        logits = lprobs / self.temperature
        if 0 < self.top_k < logits.size(-1):
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1:
            ordered, order = logits.sort(dim=-1, descending=True)
            before = ordered.softmax(dim=-1).cumsum(dim=-1) - ordered.softmax(dim=-1)  # mass of the likelier ones
            logits = logits.scatter(-1, order, ordered.masked_fill(before >= self.top_p, float("-inf")))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=self.generator).squeeze(1)


@torch.no_grad()
def greedy(model: Models, src: Tensor, src_pad: Tensor, max_extra_len: int = 50, use_cache: bool = True,
           sampling: Sampling | None = None, samples: int = 1) -> list[Hypothesis]:
    """Pick the most probable token at each step, or draw it (`sampling`). src (S0, S) -> `samples`
    hypotheses per sentence, sentence by sentence; a score is the model's log-probability, whatever
    the sampling settings. The encoder runs once per sentence."""
    models = as_list(model)
    rows = torch.arange(src.size(0), device=src.device).repeat_interleave(samples)  # (B,): sentence of each row
    B = len(rows)
    limit = max_output_lengths(src_pad, max_extra_len, models)[rows]  # (B,)
    step = _Stepper(models, src, src_pad, rows, use_cache)
    tokens = torch.full((B, 1), BOS, dtype=torch.long, device=src.device)
    scores = torch.zeros(B, device=src.device)
    active = torch.arange(B, device=src.device)  # rows still decoding
    results: list[Hypothesis | None] = [None] * B
    for t in range(1, int(limit.max()) + 2):  # t = tokens generated after this step, </s> included
        lprobs = step(tokens)  # (n, V)
        at_limit = t > limit[active]  # only </s> may follow the longest allowed output
        only_eos(lprobs, at_limit)
        if sampling is None:
            best, choice = lprobs.max(dim=-1)
        else:
            choice = sampling(lprobs)
            best = lprobs.gather(1, choice[:, None]).squeeze(1)
        scores[active] += best
        tokens = torch.cat([tokens, choice[:, None]], dim=1)
        done = choice == EOS
        for row in done.nonzero().flatten().tolist():
            r = int(active[row])
            results[r] = Hypothesis(tokens[row, 1:-1].tolist(), float(scores[r]), float(scores[r]))
        if done.all():
            break
        keep = (~done).nonzero().flatten()
        if len(keep) < len(active):
            active, tokens = active[keep], tokens[keep]
            step.select(keep)
    return results


@torch.no_grad()
def beam_search(model: Models, src: Tensor, src_pad: Tensor, beam_size: int = 4, alpha: float = 0.6,
                max_extra_len: int = 50, n_best: int = 1, use_cache: bool = True) -> list[list[Hypothesis]]:
    """Batched beam search. src (B, S) -> the n_best hypotheses of each sentence, best first.

    A sentence is finished once `beam_size` hypotheses have ended in </s>; finished sentences
    leave the batch so later steps only compute live ones.
    """
    models, B, K, device = as_list(model), src.size(0), beam_size, src.device
    limit = max_output_lengths(src_pad, max_extra_len, models)  # (B,)
    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,): sentence of each row
    step = _Stepper(models, src, src_pad, rows, use_cache)
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
                finished[sentence].append(Hypothesis(prefix, score, score))  # ranked with alpha at the end
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
    return [rerank(hyps, alpha)[:n_best] for hyps in finished]
