"""Average the parameters of a run's last step checkpoints into avg.pt (Sec. 6.1: the last 5), then
choose its length penalty on the validation split.

    python -m scripts.average --run-dir runs/multi30k [--last 5]
"""
import argparse

from scripts.cli import run
from transformer.checkpoint import average_run
from transformer.tuning import tune


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/multi30k")
    parser.add_argument("--last", type=int, help="how many (default: the run's train.average_last)")
    args = parser.parse_args(argv)
    tune(average_run(args.run_dir, args.last))
    return 0


if __name__ == "__main__":
    run(main)
