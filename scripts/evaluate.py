"""Translate a test set and score it: sacreBLEU BLEU and chrF (cased, detokenized) with signatures.

    python -m scripts.evaluate --run-dir runs/multi30k [--split test_2016_flickr] [--ckpt FILE]
    python -m scripts.evaluate --run-dir runs/multi30k --src test.de --ref test.en
    python -m scripts.evaluate --run-dir runs/multi30k --split val decode.length_penalty=1.0

Writes <run>/hyps/<split>.<lang>.txt and <run>/<split>.bleu.json, and logs the scores to TensorBoard.
"""
import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from scripts.cli import add_translator_arguments, load_translator, run
from scripts.translate import read_lines
from transformer.data import read_split
from transformer.metrics import scores

log = logging.getLogger("evaluate")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test_2016_flickr")
    parser.add_argument("--data", help="local corpus folder (default: the one the run was trained on)")
    parser.add_argument("--src", help="source file to translate instead of a split (needs --ref)")
    parser.add_argument("--ref", help="reference translations of --src, one per line")
    add_translator_arguments(parser)
    args = parser.parse_args(argv)
    if bool(args.src) != bool(args.ref):
        parser.error("--src and --ref go together")
    path, translator = load_translator(args)
    data = translator.config.data
    if args.src:
        name = Path(args.src).name
        with open(args.src, "rb") as f:
            sources = read_lines(f)
        with open(args.ref, "rb") as f:
            references = read_lines(f)
        if len(sources) != len(references):
            raise ValueError(f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}")
    else:
        name = args.split
        if args.data:
            data = replace(data, path=args.data)
        split = read_split(data, args.split)
        sources, references = split.src_text, split.tgt_text
    hyps = translator.translate(sources)
    result = scores(hyps, references)
    decode = translator.config.decode
    print(f"{name}: {len(hyps)} sentences, {data.src_lang} -> {data.tgt_lang}, {path}, beam {decode.beam_size}, "
          f"length penalty {decode.length_penalty}")
    print(f"  {result['bleu']['text']}\n    sacreBLEU signature: {result['bleu']['signature']}")
    print(f"  chrF2 = {result['chrf']['score']:.2f}\n    signature: {result['chrf']['signature']}")
    print(f"  lower-cased tokenized BLEU (the number most Multi30k papers report) = {result['bleu_lc']['score']:.2f}"
          f"\n    signature: {result['bleu_lc']['signature']}")
    if translator.tokenizer.lowercase:
        print("  (trained with tokenizer.lowercase: the outputs are lower-case, so only the lower-cased BLEU compares)")
    run_dir = Path(args.run_dir)
    (run_dir / "hyps").mkdir(parents=True, exist_ok=True)
    (run_dir / "hyps" / f"{name}.{data.tgt_lang}.txt").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    step = translator.step
    report = {"split": name, "checkpoint": str(path), "step": step, "beam": decode.beam_size,
              "length_penalty": decode.length_penalty, "sentences": len(hyps), **result}
    (run_dir / f"{name}.bleu.json").write_text(json.dumps(report, indent=2))
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "tb")) as writer:
        for metric in ("bleu", "chrf", "bleu_lc"):
            writer.add_scalar(f"test/{name}/{metric}", result[metric]["score"], step)
    return 0


if __name__ == "__main__":
    run(main)
