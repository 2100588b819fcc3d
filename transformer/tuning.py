"""The length penalty chosen for a checkpoint on the validation split, and stored in the checkpoint.

GNMT's length penalty alpha only ranks the hypotheses that have ended (search.rerank): which
hypotheses the beam keeps, and when a sentence is finished, do not depend on it. One beam search
that keeps every ended hypothesis therefore gives the output of every alpha by re-ranking, so the
sweep costs one decoding of the validation split. The choice goes into the checkpoint as
`state["decode"]`, where `Translator.from_checkpoint` finds it; `decode.length_penalty=...` overrides
it. A test split is never used.
"""
from __future__ import annotations

import logging
from pathlib import Path

from . import checkpoint
from .evaluation import test_set
from .metrics import corpus_bleu
from .search import rerank
from .translation import Translator

log = logging.getLogger(__name__)


def sweep(translator: Translator, sources: list[str], references: list[str], alphas: tuple[float, ...]) -> list[dict]:
    """BLEU, brevity penalty and length ratio of each alpha's translations, from one beam search."""
    beam = translator.config.decode.beam_size
    found = translator.translate_ids(translator.encode([s.strip() for s in sources]), beam_size=beam, n_best=beam)
    rows = []
    for alpha in alphas:
        hyps = [translator.tokenizer.decode(rerank(h, alpha)[0].tokens) if h else "" for h in found]
        result = corpus_bleu(hyps, references, lowercase=translator.tokenizer.lowercase)
        rows.append({"length_penalty": alpha, "bleu": round(result.score, 2), "bp": round(result.bp, 3),
                     "ratio": round(result.sys_len / max(result.ref_len, 1), 3)})
    return rows


def tune(path: str | Path, data_path: str | None = None, device: str | None = None,
         overrides: list[str] = ()) -> dict | None:
    """Sweep the config's `decode.tune_length_penalties` on the validation split (with `overrides` of
    decode settings, e.g. a wider beam) and store the best, with the beam size, in the checkpoint at
    `path`. Returns what is stored, or None where there is nothing to tune."""
    state = checkpoint.load(path)
    translator = Translator.from_states([state], [path], device, overrides)
    decode, split = translator.config.decode, translator.config.data.valid_split
    if not decode.tune_length_penalties or decode.beam_size <= 1 or decode.sampling:
        log.info(f"{path}: no length penalty to tune (decode.tune_length_penalties="
                 f"{list(decode.tune_length_penalties)}, beam {decode.beam_size}, sampling {decode.sampling})")
        return None
    _, sources, references = test_set(translator, split, data_path)
    rows = sweep(translator, sources, references, decode.tune_length_penalties)
    best = max(rows, key=lambda row: row["bleu"])  # the first of equals
    settings = {"length_penalty": best["length_penalty"], "beam_size": decode.beam_size}
    tuned = {"settings": settings, "split": split, "table": rows}
    state["decode"] = tuned
    checkpoint.save(state, path)
    log.info(f"{describe(tuned)}\nstored in {path}: translation uses length penalty {best['length_penalty']}")
    return tuned


def describe(tuned: dict) -> str:
    """The sweep as a table."""
    lines = [f"length penalty on {tuned['split']} (beam {tuned['settings']['beam_size']}):",
             "  alpha    BLEU      BP   hyp/ref"]
    chosen = tuned["settings"]["length_penalty"]
    for row in tuned["table"]:
        mark = "  <- chosen" if row["length_penalty"] == chosen else ""
        lines.append(f"  {row['length_penalty']:>5.2f}  {row['bleu']:>6.2f}  {row['bp']:>6.3f}  "
                     f"{row['ratio']:>8.3f}{mark}")
    return "\n".join(lines)
