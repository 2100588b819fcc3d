"""Properties of the model that the paper states: causality, padding invariance, the formulas."""
import math

import pytest
import torch

from tests.conftest import small_model
from transformer.config import load_config
from transformer.model import Dropout, MultiHeadAttention, Transformer, sinusoids

V = 50


def random_batch(B=3, S=7, T=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (B, S), generator=g)
    tgt = torch.randint(4, V, (B, T), generator=g)
    return src, torch.zeros(B, S, dtype=torch.bool), tgt


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_decoder_is_causal(norm):
    model = small_model(norm=norm)
    src, src_pad, tgt = random_batch()
    logits = model(src, src_pad, tgt)
    for t in range(tgt.size(1) - 1):
        changed = tgt.clone()
        changed[:, t + 1 :] = torch.randint(4, V, changed[:, t + 1 :].shape)
        other = model(src, src_pad, changed)
        torch.testing.assert_close(other[:, : t + 1], logits[:, : t + 1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(other[:, t + 1 :], logits[:, t + 1 :])


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_source_padding_changes_nothing(norm):
    model = small_model(norm=norm)
    src, src_pad, tgt = random_batch()
    logits = model(src, src_pad, tgt)
    padded = torch.cat([src, torch.zeros(src.size(0), 5, dtype=src.dtype)], dim=1)
    pad_mask = torch.cat([src_pad, torch.ones(src.size(0), 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(padded, pad_mask, tgt), logits, atol=1e-5, rtol=1e-5)
    # and the mask matters: unmasked padding tokens do change the output
    assert not torch.allclose(model(padded, torch.zeros_like(pad_mask), tgt), logits, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_1_minus_p_scaled_as_f_dropout_does(dtype):
    p, drop = 0.3, Dropout(0.3)
    x = (torch.rand(1001, 997) + 0.5).to(dtype).requires_grad_()  # an odd element count, no zeros
    torch.manual_seed(3)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.002
    flat = kept.flatten()
    for lag in (1, 2, 3, 4):  # neighbours share a 64-bit draw: they must still be independent
        assert abs((flat[:-lag] & flat[lag:]).float().mean().item() - (1 - p) ** 2) < 0.002
    scale = torch.ones((), dtype=dtype).div_(1 - p)  # F.dropout's noise: Bernoulli(1 - p) / (1 - p), in x's dtype
    assert torch.equal(y[kept], x.detach()[kept] * scale)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, kept.to(dtype) * scale)  # the gradient passes the same mask
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)  # seeded: the run-level seed fixes every mask
    assert not torch.equal(drop(x) != 0, kept)
    assert drop.eval()(x) is x and Dropout(0.0)(x) is x


def test_multi_head_attention_equals_the_formula():
    torch.manual_seed(0)
    B, Tq, Tk, D, H = 2, 5, 7, 24, 3
    attn = MultiHeadAttention(D, H, dropout=0.0)
    x, kv = torch.randn(B, Tq, D), torch.randn(B, Tk, D)
    mask = torch.ones(B, 1, 1, Tk, dtype=torch.bool)
    mask[1, ..., 5:] = False
    dk = D // H
    heads = []
    for i in range(H):  # head_i = softmax(Q W_i^Q (K W_i^K)^T / sqrt(dk)) V W_i^V
        rows = slice(i * dk, (i + 1) * dk)
        q = x @ attn.w_q.weight[rows].T
        k = kv @ attn.w_k.weight[rows].T
        v = kv @ attn.w_v.weight[rows].T
        scores = q @ k.transpose(1, 2) / math.sqrt(dk)
        scores = scores.masked_fill(~mask[:, 0], float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v)
    expected = torch.cat(heads, dim=-1) @ attn.w_o.weight.T  # Concat(head_1..head_H) W^O
    torch.testing.assert_close(attn(x, kv, mask), expected, atol=1e-5, rtol=1e-5)
    weights = attn.attention_weights(x, kv, mask)  # what the heatmaps show: the same softmax
    v = attn.split_heads(attn.w_v(kv))
    heads = (weights @ v).transpose(1, 2).reshape(B, Tq, D)
    torch.testing.assert_close(attn.w_o(heads), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, Tq))
    assert (weights[1, ..., 5:] == 0).all()


def test_positional_encoding_is_the_paper_formula():
    P, D = 60, 16
    pe = sinusoids(P, D)
    for pos in range(P):
        for i in range(D // 2):
            angle = pos / 10000 ** (2 * i / D)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_embeddings_and_pre_softmax_share_one_parameter():
    model = small_model()
    assert model.src_embedding.weight is model.embedding.weight
    shared = [p for p in model.parameters() if p is model.embedding.weight]
    assert len(shared) == 1
    src, src_pad, tgt = random_batch()
    model(src, src_pad, tgt).logsumexp(-1).sum().backward()
    unseen = sorted(set(range(1, V)) - set(src.flatten().tolist()) - set(tgt.flatten().tolist()))
    # rows of tokens absent from the input still get gradient: the pre-softmax layer is this matrix
    assert model.embedding.weight.grad[unseen].abs().sum(-1).min() > 0
    separate = small_model(share_embeddings=False)
    assert separate.src_embedding.weight is not separate.embedding.weight


def test_embeddings_are_scaled_by_sqrt_d_model():
    model = small_model(dropout=0.0)
    tokens = torch.tensor([[5, 6, 7]])
    expected = model.embedding.weight[tokens] * math.sqrt(32) + sinusoids(3, 32)
    torch.testing.assert_close(model.embed(tokens, model.embedding), expected)


def test_cached_decoding_equals_full_decoding():
    model = small_model()
    src, src_pad, tgt = random_batch()
    src_pad[0, -2:] = True
    memory = model.encode(src, src_pad)
    full = model.decode(tgt, memory, src_pad)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, src_pad, cache) for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_attention_maps_are_each_layers_softmax_within_the_masks():
    model = small_model()
    src, src_pad, tgt = random_batch()
    src_pad[0, -2:] = True
    maps = model.attention_maps(src, src_pad, tgt)
    assert {kind: len(layers) for kind, layers in maps.items()} == {"encoder_self": 2, "decoder_self": 2, "cross": 2}
    for kind, layers in maps.items():
        for weights in layers:
            torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
            if kind == "decoder_self":
                assert (weights.triu(1) == 0).all()  # no position attends to a later one
            else:
                assert (weights[0, ..., -2:] == 0).all()  # nothing attends to padding
    assert not any(m._forward_hooks for m in model.modules())  # the pass left no hook behind


def test_too_long_input_is_a_clear_error():
    model = small_model(max_positions=8)
    src, src_pad, tgt = random_batch(S=9)
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(src, src_pad)


@pytest.mark.parametrize("path, low, high", [("configs/base.yaml", 62e6, 66e6), ("configs/big.yaml", 208e6, 218e6)])
def test_paper_model_sizes(path, low, high):
    config = load_config(path)
    model = Transformer(config.model, config.tokenizer.vocab_size)
    assert low <= sum(p.numel() for p in model.parameters()) <= high


# ---------------------------------------------------------------------------- what-if variants

def test_with_every_variant_at_its_default_the_model_is_the_papers():
    """Parameters and outputs of a seeded model, as the model computed them before the variants existed."""
    model = small_model()
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(4, V, (2, 7), generator=g), torch.randint(4, V, (2, 5), generator=g)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    with torch.no_grad():
        out = model(src, pad, tgt).double()
        total = float(sum(p.double().sum() for p in model.parameters()))
    assert len(list(model.parameters())) == 61 and sum(p.numel() for p in model.parameters()) == 43584
    assert total == pytest.approx(283.44358200182614, rel=1e-9)
    assert (float(out.sum()), float(out.abs().sum())) == pytest.approx((96.88354955380782, 348.88636208092794),
                                                                         rel=1e-5)


def attention_case(score, d_k=0, seed=0):
    torch.manual_seed(seed)
    attn = MultiHeadAttention(16, 2, 0.0, d_k, score).eval()
    x, kv = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    q, k, v = attn.split_heads(attn.w_q(x)), attn.split_heads(attn.w_k(kv)), attn.split_heads(attn.w_v(kv))
    return attn, x, kv, q, k, v


@pytest.mark.parametrize("score", ["scaled_dot", "dot", "squared", "reversed", "additive"])
def test_each_attention_score_is_its_formula(score):
    attn, x, kv, q, k, v = attention_case(score)
    dk = q.size(-1)
    explicit = {  # (B, H, Tq, Tk), written out
        "scaled_dot": lambda: q @ k.transpose(-2, -1) / math.sqrt(dk),
        "dot": lambda: q @ k.transpose(-2, -1),
        "squared": lambda: (q**2) @ (k**2).transpose(-2, -1) / math.sqrt(dk),
        "reversed": lambda: torch.einsum("bhqd,bhkd->bhqk", q, k[..., torch.arange(dk - 1, -1, -1)]) / math.sqrt(dk),
        "additive": lambda: (torch.tanh(q[:, :, :, None] + k[:, :, None]) * attn.v_a[None, :, None, None]).sum(-1),
    }[score]()
    heads = explicit.softmax(-1) @ v  # (B, H, Tq, dv)
    expected = attn.w_o(heads.transpose(1, 2).reshape(2, 3, 16))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, kv), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn.attention_weights(x, kv), explicit.softmax(-1), atol=1e-6, rtol=1e-5)


def test_a_smaller_d_k_narrows_queries_and_keys_only():
    attn, x, kv, q, k, v = attention_case("scaled_dot", d_k=4)
    assert q.shape[-1] == 4 and k.shape[-1] == 4 and v.shape[-1] == 8  # values keep D / H
    expected = attn.w_o(((q @ k.transpose(-2, -1) / 2).softmax(-1) @ v).transpose(1, 2).reshape(2, 3, 16))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, kv), expected, atol=1e-5, rtol=1e-5)


def test_decoder_masks_see_what_their_names_say():
    src, src_pad, tgt = random_batch(T=6)
    seen = {}
    for order in ("causal", "anticausal", "none"):
        model = small_model(decoder_mask=order)
        weights = model.attention_maps(src, src_pad, tgt)["decoder_self"][0]  # (B, H, T, T)
        seen[order] = (bool((weights[..., 0, -1] > 0).all()), bool((weights[..., -1, 0] > 0).all()))
        changed = tgt.clone()
        changed[:, -1] = (changed[:, -1] + 1 - 4) % (V - 4) + 4  # another last token
        with torch.no_grad():
            first_moves = not torch.allclose(model(src, src_pad, tgt)[:, 0], model(src, src_pad, changed)[:, 0])
        assert first_moves == (order != "causal")  # position 0 reads the last token unless causal
    # (0 sees the last, the last sees 0)
    assert seen == {"causal": (False, True), "anticausal": (True, False), "none": (True, True)}


@pytest.mark.parametrize("order", ["anticausal", "none"])
def test_masks_that_see_later_positions_ignore_target_padding(order):
    model = small_model(decoder_mask=order)
    src, src_pad, tgt = random_batch(B=1, T=4)
    padded = torch.cat([tgt, torch.zeros(1, 3, dtype=torch.long)], dim=1)  # PAD = 0 after the target
    with torch.no_grad():
        out = model(src, src_pad, padded)
    torch.testing.assert_close(out[:, :4], model(src, src_pad, tgt), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()  # padding positions too: a NaN there would reach the gradients


@pytest.mark.parametrize("order", ["anticausal", "none"])
def test_decoding_a_decoder_that_sees_later_positions_recomputes_the_prefix(order):
    from transformer.search import beam_search, greedy

    model = small_model(decoder_mask=order)
    src, src_pad, _ = random_batch()
    assert [h.tokens for h in greedy(model, src, src_pad, 5)] == [
        h.tokens for h in greedy(model, src, src_pad, 5, use_cache=False)]
    assert len(beam_search(model, src, src_pad, 3, max_extra_len=5)) == 3


def test_positions_learned_are_parameters_and_none_adds_nothing():
    learned, none = small_model(positional="learned"), small_model(positional="none")
    assert any(name == "pe" for name, _ in learned.named_parameters())
    assert not any(name == "pe" for name, _ in none.named_parameters())
    tokens = torch.randint(4, V, (2, 5))
    torch.testing.assert_close(none.embed(tokens, none.embedding), none.embedding(tokens) * math.sqrt(32), atol=0,
                               rtol=0)
    torch.testing.assert_close(learned.embed(tokens, learned.embedding),
                               learned.embedding(tokens) * math.sqrt(32) + learned.pe[:5], atol=0, rtol=0)
    src, src_pad, tgt = random_batch()
    learned(src, src_pad, tgt).sum().backward()
    assert learned.pe.grad is not None and learned.pe.grad[:6].abs().sum() > 0
