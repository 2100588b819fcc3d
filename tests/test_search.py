"""Decoding: beam search as in Sec. 6.1, the key/value cache, batching, and the metric."""
import math

import pytest
import torch
from torch import nn

from tests.conftest import small_model
from transformer.metrics import bleu, scores
from transformer.search import Sampling, beam_search, greedy, length_penalty, rerank
from transformer.tokenizer import BOS, EOS, PAD


def sources(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(4, 50, (n,), generator=g).tolist() + [EOS] for n in lengths]
    width = max(map(len, rows))
    src = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    return src, src == PAD


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = small_model()
    with torch.no_grad():  # make </s> likely enough that hypotheses end at different lengths
        m.embedding.weight[EOS] *= 4
    return m


def test_beam_of_one_is_greedy(model):
    src, pad = sources([5, 9, 3, 7])
    greedy_hyps = greedy(model, src, pad, max_extra_len=10)
    for g, b in zip(greedy_hyps, beam_search(model, src, pad, beam_size=1, max_extra_len=10), strict=True):
        assert b[0].tokens == g.tokens
        assert b[0].score == pytest.approx(g.score, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 4])
def test_cache_gives_the_same_tokens_and_scores(model, beam):
    src, pad = sources([5, 9, 3, 7])
    cached = beam_search(model, src, pad, beam_size=beam, max_extra_len=10, n_best=beam)
    uncached = beam_search(model, src, pad, beam_size=beam, max_extra_len=10, n_best=beam, use_cache=False)
    for c, u in zip(cached, uncached, strict=True):
        assert [h.tokens for h in c] == [h.tokens for h in u]
        assert [h.score for h in c] == pytest.approx([h.score for h in u], abs=1e-4)
    g1, g2 = greedy(model, src, pad, 10), greedy(model, src, pad, 10, use_cache=False)
    assert [h.tokens for h in g1] == [h.tokens for h in g2]


def test_hypotheses_end_at_different_lengths(model):
    src, pad = sources([5, 9, 3, 7, 4, 6])
    lengths = {len(h[0].tokens) for h in beam_search(model, src, pad, beam_size=4, max_extra_len=10)}
    assert len(lengths) > 1  # otherwise the tests above would not exercise finished sentences


@pytest.mark.parametrize("beam", [1, 4])
def test_a_sentence_alone_equals_it_inside_a_padded_batch(model, beam):
    src, pad = sources([3, 12, 6])
    together = beam_search(model, src, pad, beam_size=beam, max_extra_len=10)
    for i in range(3):
        n = int((~pad[i]).sum())
        alone = beam_search(model, src[i : i + 1, :n], pad[i : i + 1, :n], beam_size=beam, max_extra_len=10)
        assert alone[0][0].tokens == together[i][0].tokens
        assert alone[0][0].score == pytest.approx(together[i][0].score, abs=1e-4)


def test_nothing_follows_the_end_and_length_is_bounded(model):
    src, pad = sources([2, 5, 8])
    for extra in (0, 3, 10):
        for n_best in beam_search(model, src, pad, beam_size=4, max_extra_len=extra, n_best=4):
            for h in n_best:
                assert not {EOS, PAD, BOS} & set(h.tokens)
        for row, hyps in enumerate(beam_search(model, src, pad, beam_size=4, max_extra_len=extra)):
            assert len(hyps[0].tokens) <= int((~pad[row]).sum()) - 1 + extra
        for row, h in enumerate(greedy(model, src, pad, extra)):
            assert len(h.tokens) <= int((~pad[row]).sum()) - 1 + extra


def test_n_best_is_ordered_by_score_and_its_first_is_the_best(model):
    src, pad = sources([5, 9, 3, 7])
    for alpha in (0.6, 2.0):
        best = beam_search(model, src, pad, beam_size=4, alpha=alpha, max_extra_len=10)
        for one, many in zip(best, beam_search(model, src, pad, 4, alpha, 10, n_best=4), strict=True):
            assert len(many) == 4 and many[0] == one[0]
            assert [h.normalized for h in many] == sorted((h.normalized for h in many), reverse=True)
            assert all(h.normalized == pytest.approx(h.score / length_penalty(len(h.tokens) + 1, alpha)) for h in many)


def test_reranking_one_beam_gives_each_length_penalty_own_search(model):
    src, pad = sources([5, 9, 3, 7, 4, 6])
    every = beam_search(model, src, pad, beam_size=4, alpha=0.6, max_extra_len=10, n_best=4)
    chosen = set()
    for alpha in (0.0, 0.6, 1.0, 1.4, 2.0, 3.0, 10.0):
        direct = beam_search(model, src, pad, beam_size=4, alpha=alpha, max_extra_len=10)
        reranked = [rerank(hyps, alpha)[0] for hyps in every]
        assert [h[0].tokens for h in direct] == [h.tokens for h in reranked]
        assert [h[0].normalized for h in direct] == pytest.approx([h.normalized for h in reranked])
        chosen.add(tuple(len(h.tokens) for h in reranked))
    assert len(chosen) > 1  # alpha changed some choice, so the equality above is not trivial


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1e-4), dict(top_k=1),
                                      dict(top_p=1e-6)])
def test_sampling_without_randomness_is_greedy(model, settings):
    src, pad = sources([5, 9, 3, 7])
    sampled = greedy(model, src, pad, 10, sampling=Sampling(**settings, generator=torch.Generator().manual_seed(0)))
    expected = greedy(model, src, pad, 10)
    assert [h.tokens for h in sampled] == [h.tokens for h in expected]
    assert [h.score for h in sampled] == pytest.approx([h.score for h in expected])


def test_sampling_is_seeded_and_varies(model):
    src, pad = sources([5] * 8)
    draw = lambda seed: [h.tokens for h in greedy(model, src, pad, 10, sampling=Sampling(
        generator=torch.Generator().manual_seed(seed)))]
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert len({tuple(t) for t in draw(1)}) > 1  # one source, several translations


def test_sampling_draws_from_the_truncated_distribution():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    lprobs = probs.log().expand(20000, 4)
    count = lambda **kw: torch.bincount(Sampling(**kw, generator=torch.Generator().manual_seed(0))(lprobs),
                                        minlength=4) / 20000
    assert count().tolist() == pytest.approx(probs.tolist(), abs=0.015)
    assert count(top_k=2).tolist() == pytest.approx([2 / 3, 1 / 3, 0, 0], abs=0.015)
    assert count(top_p=0.7).tolist() == pytest.approx([2 / 3, 1 / 3, 0, 0], abs=0.015)  # 0.5 + 0.25 reach 0.7
    assert count(top_p=0.5).tolist() == pytest.approx([1, 0, 0, 0])
    sharp = (probs ** 2) / (probs ** 2).sum()
    assert count(temperature=0.5).tolist() == pytest.approx(sharp.tolist(), abs=0.015)


def test_an_ensemble_of_one_is_that_model_and_of_two_averages_log_probabilities(model):
    src, pad = sources([5, 9, 3, 7])
    one, alone = beam_search([model], src, pad, 4, 0.6, 10, n_best=4), beam_search(model, src, pad, 4, 0.6, 10, 4)
    assert [[(h.tokens, h.score) for h in n] for n in one] == [[(h.tokens, h.score) for h in n] for n in alone]
    torch.manual_seed(5)
    other = small_model(vocab_size=model.embedding.num_embeddings)
    src1, pad1 = sources([6])
    pair = greedy([model, other], src1, pad1, max_extra_len=10)[0]
    tgt_in, target = torch.tensor([[BOS] + pair.tokens]), torch.tensor(pair.tokens + [EOS])
    with torch.no_grad():  # teacher-forced along the ensemble's output: (L+1, V) per model
        lp = [torch.log_softmax(m.decode(tgt_in, m.encode(src1, pad1), pad1)[0], -1) for m in (model, other)]
    mean = torch.log_softmax((lp[0] + lp[1]) / 2, -1)
    mean[:, [PAD, BOS]] = float("-inf")
    chosen = mean.gather(1, target[:, None]).squeeze(1)
    if len(pair.tokens) == 6 + 10:  # cut at the length limit: </s> was the only choice, with log-probability 0
        mean, chosen, target = mean[:-1], chosen[:-1], target[:-1]
    assert mean.argmax(-1).tolist() == target.tolist()  # each token the ensemble's most probable
    assert pair.score == pytest.approx(float(chosen.sum()), abs=1e-4)
    assert target.tolist() != greedy(other, src1, pad1, 10)[0].tokens + [EOS]  # not just one of them


@pytest.mark.parametrize("precision, tolerance", [("bfloat16", 0.05), ("int8", 0.2)])  # of log-probabilities ~ -4
def test_faster_precisions_predict_nearly_the_same_distribution(precision, tolerance):
    import copy

    from transformer.translation import at_precision

    model = small_model()
    fast = at_precision(copy.deepcopy(model), precision)
    src, pad = sources([5, 9, 3, 7])
    tgt = torch.tensor([[BOS, 7, 8, 9]] * 4)
    with torch.no_grad():
        exact = torch.log_softmax(model(src, pad, tgt).float(), -1)
        approx = torch.log_softmax(fast(src, pad, tgt).float(), -1)
    assert 0 < (approx - exact).abs().max() < tolerance  # close, and really computed otherwise
    assert len(greedy(fast, src, pad, 10)) == 4


def test_length_penalty_is_gnmt_formula():
    for length in (1, 5, 20):
        for alpha in (0.0, 0.6, 1.0):
            assert length_penalty(length, alpha) == pytest.approx(((5 + length) / 6) ** alpha)


class TrapModel(nn.Module):
    """A hand-built next-token distribution: greedy's first choice (A) leads only to poor continuations."""

    A, B, V = 5, 6, 12

    def __init__(self):
        super().__init__()
        self.register_buffer("pe", torch.zeros(64, 1))

    def encode(self, src, src_pad):
        return torch.zeros(src.size(0), src.size(1), 1)

    def new_cache(self):
        return None

    def decode(self, tgt_in, memory, src_pad, cache=None):
        probs = torch.full((tgt_in.size(0), tgt_in.size(1), self.V), 1e-9)
        for row, prefix in enumerate(tgt_in.tolist()):
            last = prefix[-1]
            if len(prefix) == 1:  # first token: A 0.6, B 0.4
                probs[row, -1, self.A], probs[row, -1, self.B] = 0.6, 0.4
            elif last == self.B:  # B is almost surely followed by </s>
                probs[row, -1, EOS], probs[row, -1, 4] = 0.99, 0.01
            else:  # anything else: ten equally likely continuations, </s> among them
                probs[row, -1, 3:] = 0.1
                probs[row, -1, EOS] = 0.1
        return probs.log()


def test_beam_search_escapes_the_greedy_trap():
    model = TrapModel()
    src, pad = torch.tensor([[7, 8, EOS]]), torch.zeros(1, 3, dtype=torch.bool)
    g = greedy(model, src, pad, max_extra_len=5, use_cache=False)[0]
    b = beam_search(model, src, pad, beam_size=4, max_extra_len=5, use_cache=False)[0][0]
    assert g.tokens[0] == TrapModel.A
    assert b.tokens == [TrapModel.B]
    assert b.score == pytest.approx(math.log(0.4) + math.log(0.99), abs=1e-5)
    assert b.score > g.score


def test_bleu_of_a_corpus_against_itself_is_100():
    refs = ["A man rides a bike.", "Two dogs play in the snow.", "A woman's hat is red."]
    assert bleu(refs, refs) == pytest.approx(100.0)
    result = scores(refs, refs)
    assert result["bleu"]["score"] == 100.0 and result["chrf"]["score"] == 100.0
    assert "tok:13a" in result["bleu"]["signature"] and "case:mixed" in result["bleu"]["signature"]
    with pytest.raises(ValueError, match="counts must match"):
        bleu(refs, refs[:2])
