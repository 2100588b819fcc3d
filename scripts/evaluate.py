"""Translate a test set and score it: sacreBLEU BLEU and chrF (cased, detokenized) with signatures.

    python -m scripts.evaluate --run-dir runs/multi30k [--split val] [--ckpt FILE]
    python -m scripts.evaluate --run-dir runs/multi30k --src test.de --ref test.en
    python -m scripts.evaluate --run-dir runs/multi30k --split val decode.length_penalty=1.0

The split defaults to the run's data.test_split. Writes <run>/hyps/<split>.<lang>.txt and
<run>/<split>.bleu.json, and logs the scores to TensorBoard.
"""
import argparse

from scripts.cli import add_translator_arguments, load_translator, run
from transformer.evaluation import describe, evaluate, test_set


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", help="a split of the corpus (default: the run's data.test_split)")
    parser.add_argument("--data", help="local corpus folder (default: the one the run was trained on)")
    parser.add_argument("--src", help="source file to translate instead of a split (needs --ref)")
    parser.add_argument("--ref", help="reference translations of --src, one per line")
    add_translator_arguments(parser)
    args = parser.parse_args(argv)
    paths, translator = load_translator(args)
    name, sources, references = test_set(translator, args.split, args.data, args.src, args.ref)
    print(describe(evaluate(translator, name, sources, references, args.run_dir, paths)))
    return 0


if __name__ == "__main__":
    run(main)
