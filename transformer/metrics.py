"""BLEU and chrF through sacreBLEU, always on detokenized text.

The primary numbers are sacreBLEU's defaults: cased, detokenized references, its own 13a
tokenization. Most Multi30k papers instead report BLEU on lower-cased, tokenized text; that number
is given too and labelled as such, never mixed up with the primary one.
"""
from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.bleu import BLEUScore


def _check(hyps: list[str], refs: list[str]) -> None:
    # sacreBLEU does not check this itself, and a shifted line silently ruins the score.
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references: the counts must match")


def bleu(hyps: list[str], refs: list[str], lowercase: bool = False) -> float:
    return corpus_bleu(hyps, refs, lowercase).score


def corpus_bleu(hyps: list[str], refs: list[str], lowercase: bool = False) -> BLEUScore:
    """sacreBLEU's result: .score, .bp (brevity penalty), .sys_len and .ref_len."""
    _check(hyps, refs)
    return BLEU(lowercase=lowercase).corpus_score(hyps, [refs])


def scores(hyps: list[str], refs: list[str]) -> dict:
    """BLEU and chrF (cased, detokenized) with signatures, plus lower-cased tokenized BLEU."""
    _check(hyps, refs)
    metrics = {"bleu": BLEU(), "chrf": CHRF(), "bleu_lc": BLEU(lowercase=True)}
    out = {}
    for name, metric in metrics.items():
        result = metric.corpus_score(hyps, [refs])
        out[name] = {"score": round(result.score, 2), "signature": str(metric.get_signature()), "text": str(result)}
    return out
