"""Sequence-level knowledge distillation (Kim & Rush, 2016): a corpus whose training targets are a
trained model's beam-search translations of the training sources. A student trained on it learns
the teacher's single mode instead of every reference's wording.

The folder holds train.{src,tgt} (the distilled pairs) and the validation and test splits as they
are, so the student is still selected and scored against the real references. With references the
training pairs are the original ones followed by the distilled ones (each source twice): data
diversification (Nguyen et al., 2020) with one forward model. Translation goes in chunks appended
to a partial file and resumes where it stopped: a Ctrl-C loses at most one chunk.
"""
from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import replace
from pathlib import Path

from .data import DataError, find_corpus, read_split
from .errors import InputError
from .translation import Translator

log = logging.getLogger(__name__)


def distill(translator: Translator, out: str | Path, data_path: str | None = None, chunk: int = 1000,
            with_references: bool = False) -> Path:
    """Write the distilled corpus of the teacher `translator` into `out`; returns `out`."""
    data = translator.config.data
    if data_path:
        data = replace(data, path=data_path)
    out = Path(out)
    corpus = find_corpus(data)
    if isinstance(corpus, Path) and out.resolve() == corpus.resolve():
        raise InputError(f"--out {out} is the corpus being distilled; its files would be overwritten. "
                         f"Pick another folder (OUT=)")
    out.mkdir(parents=True, exist_ok=True)
    src, tgt = data.src_lang, data.tgt_lang
    for split in (data.valid_split, data.test_split):
        try:
            pairs = read_split(data, split, corpus)
        except DataError:
            if split == data.valid_split:  # training needs it; a test split is optional
                raise
            log.info(f"no {split} split in {corpus}; the distilled corpus has none either")
            continue
        write_lines(out / f"{split}.{src}", pairs.src_text)
        write_lines(out / f"{split}.{tgt}", pairs.tgt_text)
    train = read_split(data, data.train_split, corpus)
    target, partial = out / f"{data.train_split}.{tgt}", out / f".{data.train_split}.{tgt}.partial"
    copies = 2 if with_references else 1
    if target.is_file() and target.read_text(encoding="utf-8").count("\n") == copies * len(train):
        log.info(f"{target} is complete ({copies * len(train):,} lines); delete it to distill again")
        return out
    hyps = _translate_resumably(translator, train.src_text, partial, chunk)
    write_lines(out / f"{data.train_split}.{src}", train.src_text * copies)
    write_lines(target, (train.tgt_text if with_references else []) + hyps)
    partial.unlink()
    log.info(f"wrote {out}: train with `make train DATA={shlex.quote(str(out))} CONFIG=... RUN=...`")
    return out


def _translate_resumably(translator: Translator, sources: list[str], partial: Path, chunk: int) -> list[str]:
    """Translations of `sources`, appended to `partial` a chunk at a time and resumed from it."""
    kept = partial.read_text(encoding="utf-8") if partial.is_file() else ""
    kept = kept[: kept.rfind("\n") + 1]  # a line cut off by a kill is translated again
    partial.write_text(kept, encoding="utf-8")
    done = kept.count("\n")
    if done > len(sources):
        raise InputError(f"{partial} has {done} lines but the training split has {len(sources)}: it belongs to "
                         f"another corpus; delete it")
    decode = translator.config.decode
    log.info(f"distilling {len(sources):,} sentences with beam {decode.beam_size}, length penalty "
             f"{decode.length_penalty}" + (f"; resuming at line {done + 1}" if done else ""))
    start = time.perf_counter()
    with open(partial, "a", encoding="utf-8") as f:
        for first in range(done, len(sources), chunk):
            hyps = translator.translate(sources[first : first + chunk])
            f.write("".join(one_line(h) + "\n" for h in hyps))
            f.flush()
            os.fsync(f.fileno())
            finished = first + len(hyps)
            rate = (finished - done) / (time.perf_counter() - start)
            log.info(f"  {finished:,} / {len(sources):,} sentences, {rate:.1f} a second")
    return partial.read_text(encoding="utf-8").split("\n")[:-1]


def write_lines(path: Path, lines: list[str]) -> None:
    """One line per item, written to a temporary name and renamed: never half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def one_line(text: str) -> str:
    return " ".join(text.splitlines())  # a stray newline in a hypothesis would misalign the corpus
