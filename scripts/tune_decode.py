"""Choose a checkpoint's length penalty on the validation split and store it in the checkpoint;
`make translate` and `make evaluate` then use it. Training and `make average` do this themselves.

    python -m scripts.tune_decode --run-dir runs/multi30k [--ckpt FILE] [decode.tune_length_penalties=0.6,1,2]
"""
import argparse

from scripts.cli import run
from transformer.checkpoint import find_for_inference
from transformer.errors import UserError
from transformer.tuning import tune


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/multi30k", help="run whose avg.pt, best.pt or newest step is tuned")
    parser.add_argument("--ckpt", help="a checkpoint file (overrides --run-dir)")
    parser.add_argument("--data", help="local corpus folder (default: the one the run was trained on)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("overrides", nargs="*", help="decode settings for the sweep, e.g. decode.beam_size=5")
    args = parser.parse_args(argv)
    tuned = tune(find_for_inference(args.run_dir, args.ckpt), args.data, args.device, args.overrides)
    if tuned is None:
        raise UserError("nothing to tune: the length penalty needs beam search (decode.beam_size > 1, no sampling) "
                        "and a grid (decode.tune_length_penalties)")
    return 0


if __name__ == "__main__":
    run(main)
