"""Translate a test set and score it: sacreBLEU BLEU and chrF (cased, detokenized) with signatures,
plus the lower-cased BLEU most Multi30k papers report.

    <run>/hyps/<name>.<tgt_lang>.txt    the translations
    <run>/<name>.bleu.json              scores, signatures, checkpoint and decoding settings
    <run>/tb                            test/<name>/{bleu,chrf,bleu_lc} at the checkpoint's step
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .data import read_split
from .errors import InputError
from .metrics import scores
from .translation import Translator, read_file


def test_set(translator: Translator, split: str | None = None, data_path: str | None = None,
             src: str | None = None, ref: str | None = None) -> tuple[str, list[str], list[str]]:
    """(name, sources, references): the files `src` and `ref`, or a split of the corpus the run was
    trained on (`data_path` for another folder; the run's `data.test_split` by default)."""
    if src or ref:
        if not (src and ref):
            raise InputError("--src and --ref go together: a source file and its reference translations")
        sources, references = read_file(src), read_file(ref)
        if len(sources) != len(references):
            raise InputError(f"{src} has {len(sources)} lines but {ref} has {len(references)}; they must be aligned")
        return Path(src).name, sources, references
    data = translator.config.data
    if data_path:
        data = replace(data, path=data_path)
    split = split or data.test_split
    pairs = read_split(data, split)
    return split, pairs.src_text, pairs.tgt_text


def evaluate(translator: Translator, name: str, sources: list[str], references: list[str], run_dir: str | Path,
             checkpoints: list[Path]) -> dict:
    """Translate `sources`, score against `references`, and write the outputs into `run_dir`."""
    hyps = translator.translate(sources)
    decode, data = translator.config.decode, translator.config.data
    report = {"split": name, "checkpoint": " + ".join(map(str, checkpoints)), "step": translator.step,
              "direction": f"{data.src_lang} -> {data.tgt_lang}", "beam": decode.beam_size,
              "length_penalty": decode.length_penalty, "length_penalty_chosen_on": translator.tuned_on,
              "sentences": len(hyps), "lowercased_training": translator.tokenizer.lowercase,
              **scores(hyps, references)}
    run_dir = Path(run_dir)
    (run_dir / "hyps").mkdir(parents=True, exist_ok=True)
    (run_dir / "hyps" / f"{name}.{data.tgt_lang}.txt").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    (run_dir / f"{name}.bleu.json").write_text(json.dumps(report, indent=2))
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "tb")) as writer:
        for metric in ("bleu", "chrf", "bleu_lc"):
            writer.add_scalar(f"test/{name}/{metric}", report[metric]["score"], translator.step)
    return report


def describe(report: dict) -> str:
    """The report as `make evaluate` prints it."""
    lines = [f"{report['split']}: {report['sentences']} sentences, {report['direction']}, {report['checkpoint']}, "
             f"beam {report['beam']}, length penalty {report['length_penalty']}"
             + (f" (chosen on {report['length_penalty_chosen_on']})" if report["length_penalty_chosen_on"] else ""),
             f"  {report['bleu']['text']}\n    sacreBLEU signature: {report['bleu']['signature']}",
             f"  chrF2 = {report['chrf']['score']:.2f}\n    signature: {report['chrf']['signature']}",
             f"  lower-cased tokenized BLEU (the number most Multi30k papers report) = {report['bleu_lc']['score']:.2f}"
             f"\n    signature: {report['bleu_lc']['signature']}"]
    if report["lowercased_training"]:
        lines.append("  (trained with tokenizer.lowercase: the outputs are lower-case, so only the lower-cased BLEU "
                     "compares)")
    return "\n".join(lines)
