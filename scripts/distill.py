"""Sequence-level knowledge distillation: a corpus of a trained model's translations of its training
sources, for a student (transformer/distillation.py says more).

    python -m scripts.distill --run-dir runs/teacher [--out runs/teacher/distilled] [decode.beam_size=5]
    make train CONFIG=... DATA=runs/teacher/distilled RUN=runs/student
"""
import argparse
from pathlib import Path

from scripts.cli import add_translator_arguments, load_translator, run
from transformer.distillation import distill


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="corpus folder to write (default: <run-dir>/distilled)")
    parser.add_argument("--data", help="local corpus folder (default: the one the teacher was trained on)")
    parser.add_argument("--chunk", type=int, default=1000, help="sentences translated between appends to the output")
    parser.add_argument("--with-references", action="store_true",
                        help="train on the original pairs as well as the distilled ones (data diversification)")
    add_translator_arguments(parser)
    args = parser.parse_args(argv)
    _, translator = load_translator(args)
    distill(translator, args.out or Path(args.run_dir) / "distilled", args.data, args.chunk, args.with_references)
    return 0


if __name__ == "__main__":
    run(main)
