"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017), in paper order.

Shape legend: B batch, S source length, T target length, D d_model, H heads, dk = D / H, V vocab,
F d_ff. Masks say what True means: `src_pad` is True at padding positions.

Paper ledger: every item of the paper, where it lives here, and whether it is faithful or a stated
deviation. `make summary` prints it; the README links here.

| paper (section)                         | here                            | status                                 |
|-----------------------------------------|---------------------------------|----------------------------------------|
| Scaled dot-product attention (3.2.1)    | MultiHeadAttention, via SDPA    | faithful; math kernel for bf16 on CPU  |
| Multi-head attention, no biases (3.2.2) | MultiHeadAttention              | faithful                               |
| Position-wise FFN, ReLU (3.3)           | FeedForward                     | faithful                               |
| Post-norm residual blocks (3.1, 5.4)    | Residual, `model.norm=post`     | faithful; pre-norm is an option        |
| LayerNorm epsilon                       | `model.layer_norm_eps` = 1e-6   | not given in the paper                 |
| Encoder and decoder stacks, N = 6 (3.1) | EncoderLayer, DecoderLayer      | faithful                               |
| Decoder masks future positions (3.2.3)  | `model.decoder_mask` = causal   | faithful                               |
| Shared embeddings and pre-softmax (3.4) | Transformer.embedding           | faithful; `share_embeddings` option    |
| Embeddings scaled by sqrt(D) (3.4)      | Transformer.embed               | faithful                               |
| Sinusoidal positional encoding (3.5)    | sinusoids()                     | faithful; `model.max_positions` rows   |
| Dropout on embeddings, sublayers (5.4)  | Dropout in embed, Residual      | faithful; CPU p rounded to 1/65536 (a) |
| Weight initialization                   | Xavier uniform; embed N(0, 1/D) | not given in the paper                 |
| Label smoothing 0.1 (5.4)               | transformer/loss.py             | faithful; gradient written out (b)     |
| Adam 0.9 / 0.98 / 1e-9, warmup (5.3)    | transformer/optim.py            | faithful; `train.lr_factor` scales it  |
| ~25k source + 25k target tokens (5.1)   | transformer/batching.py         | token budget a device x accumulation   |
| Beam 4, alpha 0.6, max len + 50 (6.1)   | transformer/search.py           | GNMT penalty; alpha chosen on val (c)  |
| Average the last 5 checkpoints (6.1)    | transformer/checkpoint.py       | by step count, not 10-minute intervals |

(a) attention and ReLU dropout are options, 0 by default. (b) tested against F.cross_entropy.
(c) lp(Y) = ((5 + |Y|) / 6)^alpha; 6.1 chose it "after experimentation on the development set",
and transformer/tuning.py does so for each checkpoint, from `decode.tune_length_penalties`.
What-if variants, each defaulting to the paper: `model.attention_score` (dot, additive, squared,
reversed), `model.decoder_mask` (anticausal, none), `model.positional` (learned, Table 3 row E;
none) and `model.d_k` (Table 3 row B); docs/lab.md trains and scores each.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import ModelConfig


def sinusoids(n_positions: int, d_model: int) -> Tensor:
    """Sec. 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D))."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (D/2,)
    angle = position / 10000 ** (two_i / d_model)  # (P, D/2)
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.float()


def fixed_positions(config: ModelConfig) -> Tensor:
    """The position table that is not learned: Sec. 3.5's sinusoids, or zeros (no position information)."""
    if config.positional == "sinusoid":
        return sinusoids(config.max_positions, config.d_model)
    return torch.zeros(config.max_positions, config.d_model)


@dataclass
class KVCache:
    """Keys and values one attention module has already computed during incremental decoding."""

    static: bool  # True: over the encoder output, projected once; False: grows by the new positions
    k: Tensor | None = None  # (B, H, L, dk)
    v: Tensor | None = None


@dataclass
class LayerCache:
    """A decoder layer's caches: its masked self-attention and its attention over the encoder output."""

    self_attn: KVCache = field(default_factory=lambda: KVCache(static=False))
    cross_attn: KVCache = field(default_factory=lambda: KVCache(static=True))


class DecoderCache(list):
    """One LayerCache per decoder layer, plus the number of target positions already decoded."""

    def __init__(self, n_layers: int):
        super().__init__(LayerCache() for _ in range(n_layers))
        self.length = 0

    def select(self, index: Tensor) -> None:
        """Keep rows `index` of every cached tensor (beam search reorders hypotheses)."""
        for layer in self:
            for kv in (layer.self_attn, layer.cross_attn):
                if kv.k is not None:
                    kv.k, kv.v = kv.k.index_select(0, index), kv.v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Sec. 3.2.2: MultiHead(Q, K, V) = Concat(head_1..head_H) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    Attention(Q, K, V) = softmax(Q K^T / sqrt(dk)) V (Sec. 3.2.1) is computed by
    `F.scaled_dot_product_attention`; `attention_weights` gives the softmax itself (for heatmaps).
    `score` swaps the compatibility function for a what-if variant (`scores` spells each out):
    dot (no 1 / sqrt(dk)), additive (v^T tanh(q + k) per head, the alternative Sec. 3.2.1 compares),
    squared (the squares of q's and k's components, then the scaled dot product), reversed (q against
    k's components in reverse order).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, d_k: int = 0, score: str = "scaled_dot"):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads, self.dropout, self.score = n_heads, dropout, score
        self.d_k = d_k or d_model // n_heads
        self.w_q = nn.Linear(d_model, n_heads * self.d_k, bias=False)
        self.w_k = nn.Linear(d_model, n_heads * self.d_k, bias=False)
        self.w_v = nn.Linear(d_model, d_model, bias=False)
        self.w_o = nn.Linear(d_model, d_model, bias=False)
        if score == "additive":  # v_a of each head (Bahdanau et al., 2015)
            self.v_a = nn.Parameter(torch.empty(n_heads, self.d_k).uniform_(-self.d_k**-0.5, self.d_k**-0.5))

    def split_heads(self, x: Tensor) -> Tensor:
        B, L, HD = x.shape
        return x.view(B, L, self.n_heads, HD // self.n_heads).transpose(1, 2)  # (B, H, L, dk) or (B, H, L, dv)

    def project(self, x: Tensor, kv: Tensor, cache: KVCache | None) -> tuple[Tensor, Tensor, Tensor]:
        """Q from x (B, Tq, D); K and V from kv (B, Tk, D), or from the cache: each (B, H, L, dk)."""
        q = self.split_heads(self.w_q(x))
        if cache is not None and cache.static and cache.k is not None:
            return q, cache.k, cache.v  # the encoder output is projected once per sentence, not once per step
        k, v = self.split_heads(self.w_k(kv)), self.split_heads(self.w_v(kv))
        if cache is not None:
            if not cache.static and cache.k is not None:  # the new positions join the cached ones
                k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
            cache.k, cache.v = k, v
        return q, k, v

    def forward(self, x: Tensor, kv: Tensor, mask: Tensor | None = None, causal: bool = False,
                cache: KVCache | None = None) -> Tensor:
        """x (B, Tq, D) attends over kv (B, Tk, D); mask (B, 1, 1 or Tq, Tk), True = may attend. -> (B, Tq, D)

        With a cache, x holds only the new positions: one new position may see everything before it.
        """
        q, k, v = self.project(x, kv, cache)
        causal = causal and q.size(2) > 1
        if causal and k.size(2) != q.size(2):
            raise ValueError("a cached decoder step must add one position at a time after the first")
        p = self.dropout if self.training else 0.0
        if self.score == "additive":
            weights = F.dropout(self.masked(self.scores(q, k), mask, causal).softmax(-1), p, self.training)
            heads = weights @ v
        else:
            q, k, scale = self.operands(q, k)
            backend = SDPBackend.MATH if q.device.type == "cpu" and q.dtype == torch.bfloat16 else None
            with sdpa_kernel(backend) if backend else contextlib.nullcontext():  # CPU flash: ~8x slower here
                heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal,
                                                       scale=scale)
        B, H, Tq, dv = heads.shape
        return self.w_o(heads.transpose(1, 2).reshape(B, Tq, H * dv))  # Concat(head_1..head_H) W^O: (B, Tq, D)

    def operands(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, float | None]:
        """The dot-product scores as (q', k', scale): scores = q' k'^T x scale; None = 1 / sqrt(dk)."""
        if self.score == "dot":
            return q, k, 1.0
        if self.score == "squared":
            return q * q, k * k, None
        if self.score == "reversed":
            return q, k.flip(-1), None
        return q, k, None

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """The compatibility of each query with each key, (B, H, Tq, Tk), before masks and softmax."""
        if self.score == "additive":  # (B, H, Tq, 1, dk) + (B, H, 1, Tk, dk) -> (B, H, Tq, Tk)
            return torch.einsum("bhqkd,hd->bhqk", (q[:, :, :, None] + k[:, :, None]).tanh(), self.v_a)
        q, k, scale = self.operands(q, k)
        scores = q @ k.transpose(-2, -1)
        return scores / math.sqrt(q.size(-1)) if scale is None else scores * scale

    @staticmethod
    def masked(scores: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        if causal:
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        return scores if mask is None else scores.masked_fill(~mask, float("-inf"))

    def attention_weights(self, x: Tensor, kv: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """The softmax of each head, (B, H, Tq, Tk): the weights `forward` averages V with."""
        q, k = self.split_heads(self.w_q(x)), self.split_heads(self.w_k(kv))  # V is not needed for weights
        return self.masked(self.scores(q, k), mask, causal).softmax(-1)


class Dropout(nn.Module):
    """Sec. 5.4's dropout as F.dropout computes it: keep each element with probability 1 - p, scale by 1 / (1 - p).

    On CPU the keep mask is drawn from 16 random bits an element, 64 bits a draw: torch's
    per-element Bernoulli sampling took a quarter of a training step there, and this is ~5x
    faster. P(drop) is p rounded to 1/65536. On other devices it is F.dropout (a fused kernel).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p >= 1.0:
            return F.dropout(x, self.p, True)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # uniform 64-bit words
        keep = bits.view(torch.int16)[:n].view(x.shape) >= round(self.p * 65536) - 32768
        return x * keep.to(x.dtype).div_(1.0 - self.p)


class FeedForward(nn.Module):
    """Sec. 3.3: FFN(x) = max(0, x W_1 + b_1) W_2 + b_2."""

    def __init__(self, d_model: int, d_ff: int, relu_dropout: float):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.dropout = Dropout(relu_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


class Residual(nn.Module):
    """Sec. 3.1 / 5.4: LayerNorm(x + Dropout(Sublayer(x))); pre-norm: x + Dropout(Sublayer(LayerNorm(x)))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


def attention(config: ModelConfig) -> MultiHeadAttention:
    return MultiHeadAttention(config.d_model, config.n_heads, config.attention_dropout, config.d_k,
                              config.attention_score)


class EncoderLayer(nn.Module):
    """Sec. 3.1: multi-head self-attention, then the position-wise FFN, each in a residual block."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = attention(config)
        self.ffn = FeedForward(config.d_model, config.d_ff, config.relu_dropout)
        self.res_attn, self.res_ffn = Residual(config), Residual(config)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        x = self.res_attn(x, lambda h: self.self_attn(h, h, src_mask))  # (B, S, D)
        return self.res_ffn(x, self.ffn)


class DecoderLayer(nn.Module):
    """Sec. 3.1: masked self-attention, attention over the encoder output, FFN; each in a residual block."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn, self.cross_attn = attention(config), attention(config)
        self.causal = config.decoder_mask == "causal"
        self.ffn = FeedForward(config.d_model, config.d_ff, config.relu_dropout)
        self.res_self, self.res_cross, self.res_ffn = Residual(config), Residual(config), Residual(config)

    def forward(self, y: Tensor, memory: Tensor, src_mask: Tensor, cache: LayerCache | None = None,
                tgt_mask: Tensor | None = None) -> Tensor:
        """tgt_mask (B, 1, T, T), True = may attend: what the self-attention sees when it is not causal."""
        self_cache, cross_cache = (cache.self_attn, cache.cross_attn) if cache is not None else (None, None)
        y = self.res_self(y, lambda h: self.self_attn(h, h, tgt_mask, causal=self.causal, cache=self_cache))
        y = self.res_cross(y, lambda h: self.cross_attn(h, memory, src_mask, cache=cross_cache))
        return self.res_ffn(y, self.ffn)


class Transformer(nn.Module):
    """The encoder-decoder model of Sec. 3 (Figure 1). Returns logits; the loss lives in training."""

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int = 0):
        super().__init__()
        self.config, self.vocab_size, self.pad_id = config, vocab_size, pad_id
        D = config.d_model
        # Sec. 3.4: one matrix for both embeddings and the pre-softmax linear transformation.
        self.embedding = nn.Embedding(vocab_size, D, padding_idx=pad_id)
        self.src_embedding = (self.embedding if config.share_embeddings
                              else nn.Embedding(vocab_size, D, padding_idx=pad_id))
        if config.positional == "learned":  # Table 3 row E: a learned row per position (Gehring et al., 2017)
            self.pe = nn.Parameter(torch.empty(config.max_positions, D))  # (P, D)
        else:
            self.register_buffer("pe", fixed_positions(config), persistent=False)  # (P, D)
        self.dropout = Dropout(config.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        pre = config.norm == "pre"  # pre-norm stacks need a final LayerNorm; post-norm ends in one
        self.encoder_norm = nn.LayerNorm(D, eps=config.layer_norm_eps) if pre else nn.Identity()
        self.decoder_norm = nn.LayerNorm(D, eps=config.layer_norm_eps) if pre else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embedding" not in name and name != "pe":
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        for emb in {self.embedding, self.src_embedding}:
            nn.init.normal_(emb.weight, mean=0.0, std=self.config.d_model**-0.5)
            with torch.no_grad():
                emb.weight[self.pad_id].zero_()
        if isinstance(self.pe, nn.Parameter):
            nn.init.normal_(self.pe, mean=0.0, std=self.config.d_model**-0.5)

    def embed(self, tokens: Tensor, embedding: nn.Embedding, offset: int = 0) -> Tensor:
        """Sec. 3.4-3.5: Dropout(Embedding(x) * sqrt(D) + PE). tokens (B, L) -> (B, L, D)."""
        L = tokens.size(1)
        if offset + L > self.pe.size(0):
            raise ValueError(f"sequence of {offset + L} tokens exceeds model.max_positions={self.pe.size(0)}")
        x = embedding(tokens) * math.sqrt(self.config.d_model) + self.pe[offset : offset + L]
        return self.dropout(x)

    @staticmethod
    def attention_mask(src_pad: Tensor) -> Tensor:
        """The one place masks change meaning: src_pad (B, S), True = padding -> (B, 1, 1, S), True = attend."""
        return ~src_pad[:, None, None, :]

    def decoder_mask(self, tgt_in: Tensor) -> Tensor:
        """What-if masks of the decoder's self-attention, (B, 1, T, T), True = may attend: anticausal
        (each position sees itself and those after), none (all). The causal mask of Sec. 3.2.3 hides the
        padding at the end of a target by itself; these mask it, and every position keeps itself, so
        a padding position under the anticausal mask still attends to something."""
        T = tgt_in.size(1)
        allowed = self.attention_mask(tgt_in == self.pad_id)  # (B, 1, 1, T)
        if self.config.decoder_mask == "anticausal":
            allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=tgt_in.device).triu()
        return allowed | torch.eye(T, dtype=torch.bool, device=tgt_in.device)

    def encode(self, src: Tensor, src_pad: Tensor) -> Tensor:
        """src (B, S) token ids, src_pad (B, S) -> memory (B, S, D)."""
        x, mask = self.embed(src, self.src_embedding), self.attention_mask(src_pad)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_pad: Tensor, cache: DecoderCache | None = None) -> Tensor:
        """tgt_in (B, T) -> logits (B, T, V). With a cache, tgt_in holds only the new positions."""
        offset = cache.length if cache is not None else 0
        y, mask = self.embed(tgt_in, self.embedding, offset), self.attention_mask(src_pad)
        tgt_mask = None if self.config.decoder_mask == "causal" else self.decoder_mask(tgt_in)
        if cache is not None and tgt_mask is not None:
            raise ValueError(f"model.decoder_mask={self.config.decoder_mask} lets a position see later ones, which "
                             f"a cache of earlier keys cannot follow; decode without the cache")
        for i, layer in enumerate(self.decoder):
            y = layer(y, memory, mask, cache[i] if cache is not None else None, tgt_mask)
        if cache is not None:
            cache.length += tgt_in.size(1)
        return F.linear(self.decoder_norm(y), self.embedding.weight)  # (B, T, V)

    def new_cache(self) -> DecoderCache:
        return DecoderCache(len(self.decoder))

    def forward(self, src: Tensor, src_pad: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for targets tgt_in (B, T) given sources src (B, S)."""
        return self.decode(tgt_in, self.encode(src, src_pad), src_pad)

    @torch.no_grad()
    def attention_maps(self, src: Tensor, src_pad: Tensor, tgt_in: Tensor) -> dict[str, list[Tensor]]:
        """Every layer's attention weights (B, H, Tq, Tk) in one teacher-forced pass, by kind:
        encoder_self, decoder_self and cross (decoder over the encoder output)."""
        modules = {"encoder_self": [layer.self_attn for layer in self.encoder],
                   "decoder_self": [layer.self_attn for layer in self.decoder],
                   "cross": [layer.cross_attn for layer in self.decoder]}
        maps = {kind: [None] * len(attns) for kind, attns in modules.items()}
        hooks = []
        for kind, attns in modules.items():
            for i, attn in enumerate(attns):
                def keep(module, args, kwargs, output, kind=kind, i=i):  # the inputs this module attended with
                    kwargs = {k: v for k, v in kwargs.items() if k != "cache"}
                    maps[kind][i] = module.attention_weights(*args, **kwargs)
                hooks.append(attn.register_forward_hook(keep, with_kwargs=True))
        try:
            self(src, src_pad, tgt_in)
        finally:
            for hook in hooks:
                hook.remove()
        return maps


def forward_flops(config: ModelConfig, vocab_size: int, S: int, T: int) -> int:
    """Matmul FLOPs of one forward pass over a sentence pair of S source and T target tokens.

    Training costs about 3x this (backward = 2x forward). Attention scores count the full T x T
    square (SDPA with a causal mask may skip part of it); embeddings lookups are free.
    """
    D, F_, Ne, Nd = config.d_model, config.d_ff, config.encoder_layers, config.decoder_layers
    encoder = Ne * (S * (2 * 4 * D * D + 2 * 2 * D * F_) + 2 * 2 * S * S * D)
    decoder = Nd * (
        T * (2 * 4 * D * D + 2 * 2 * D * D + 2 * 2 * D * F_)  # self-attn QKVO, cross-attn QO, FFN
        + S * 2 * 2 * D * D  # cross-attn K, V over the memory
        + 2 * 2 * T * T * D + 2 * 2 * T * S * D  # attention scores and weighted sums
    )
    return encoder + decoder + T * 2 * D * vocab_size  # + pre-softmax projection
