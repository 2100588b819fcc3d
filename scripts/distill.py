"""Sequence-level knowledge distillation (Kim & Rush, 2016): a corpus whose training targets are a
trained model's beam-search translations of the training sources. A student trained on it learns
the teacher's single mode instead of every reference's wording.

    python -m scripts.distill --run-dir runs/teacher [--out runs/teacher/distilled] [decode.beam_size=5]
    make train CONFIG=... DATA=runs/teacher/distilled RUN=runs/student

The folder holds train.{src,tgt} (the distilled pairs) and the validation and test splits as they
are, so the student is still selected and scored against the real references. With
--with-references the training pairs are the original ones followed by the distilled ones (each
source twice): data diversification (Nguyen et al., 2020) with one forward model. Translation goes
in chunks and resumes where it stopped: a Ctrl-C loses at most one chunk.
"""
import argparse
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from scripts.cli import add_translator_arguments, load_translator, run
from transformer.data import DataError, find_corpus, read_split

log = logging.getLogger("distill")


def write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def one_line(text: str) -> str:
    return " ".join(text.splitlines())  # a stray newline in a hypothesis would misalign the corpus


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="corpus folder to write (default: <run-dir>/distilled)")
    parser.add_argument("--data", help="local corpus folder (default: the one the teacher was trained on)")
    parser.add_argument("--chunk", type=int, default=1000, help="sentences translated between appends to the output")
    parser.add_argument("--with-references", action="store_true",
                        help="train on the original pairs as well as the distilled ones")
    add_translator_arguments(parser)
    args = parser.parse_args(argv)
    path, translator = load_translator(args)
    data = translator.config.data
    if args.data:
        data = replace(data, path=args.data)
    out = Path(args.out or Path(args.run_dir) / "distilled")
    corpus = find_corpus(data)
    if isinstance(corpus, Path) and out.resolve() == corpus.resolve():
        raise ValueError(f"--out {out} is the corpus being distilled; its files would be overwritten. "
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
    copies = 2 if args.with_references else 1
    if target.is_file() and target.read_text(encoding="utf-8").count("\n") == copies * len(train):
        log.info(f"{target} is complete ({copies * len(train):,} lines); delete it to distill again")
        return 0
    kept = partial.read_text(encoding="utf-8") if partial.is_file() else ""
    kept = kept[: kept.rfind("\n") + 1]  # a line cut off by a kill is translated again
    partial.write_text(kept, encoding="utf-8")
    done = kept.count("\n")
    if done > len(train):
        raise ValueError(f"{partial} has {done} lines but {data.train_split} has {len(train)}: it belongs to "
                         f"another corpus; delete it")
    decode = translator.config.decode
    log.info(f"distilling {len(train):,} {data.train_split} sentences ({src} -> {tgt}) with {path}, beam "
             f"{decode.beam_size}, length penalty {decode.length_penalty}" + (f"; resuming at line {done + 1}" if done else ""))
    start = time.perf_counter()
    with open(partial, "a", encoding="utf-8") as f:
        for first in range(done, len(train), args.chunk):
            hyps = translator.translate(train.src_text[first : first + args.chunk])
            f.write("".join(one_line(h) + "\n" for h in hyps))
            f.flush()
            os.fsync(f.fileno())
            finished = first + len(hyps)
            rate = (finished - done) / (time.perf_counter() - start)
            log.info(f"  {finished:,} / {len(train):,} sentences, {rate:.1f} a second")
    hyps = partial.read_text(encoding="utf-8").split("\n")[:-1]
    write_lines(out / f"{data.train_split}.{src}", train.src_text * copies)
    write_lines(target, (train.tgt_text if args.with_references else []) + hyps)
    partial.unlink()
    log.info(f"wrote {out}: train with `make train DATA={out} CONFIG=... RUN=...`")
    return 0


if __name__ == "__main__":
    run(main)
