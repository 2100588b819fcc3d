"""Export a checkpoint to CTranslate2 (`pip install -e ".[ct2]"`); translate with it through --engine ct2.

    python -m scripts.export --run-dir runs/multi30k [--ckpt FILE] [--out DIR] [--quantization int8]
    python -m scripts.translate --run-dir runs/multi30k --engine ct2 --sentence "Ein Hund läuft."
"""
import argparse
from pathlib import Path

from scripts.cli import run
from transformer.checkpoint import find_for_inference
from transformer.export import export


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/multi30k", help="run whose avg.pt, best.pt or newest step goes")
    parser.add_argument("--ckpt", help="a checkpoint file (overrides --run-dir)")
    parser.add_argument("--out", help="the model folder (default: <run>/ct2, where --engine ct2 looks)")
    parser.add_argument("--quantization", help="stored weight type, e.g. int8 (default: float32; int8 can also be "
                                               "chosen when translating, with decode.precision=int8)")
    args = parser.parse_args(argv)
    export(find_for_inference(args.run_dir, args.ckpt), args.out or Path(args.run_dir) / "ct2", args.quantization)
    return 0


if __name__ == "__main__":
    run(main)
