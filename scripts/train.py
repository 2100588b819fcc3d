"""Train a Transformer, or resume the run if its folder already holds checkpoints.

    python -m scripts.train --config configs/multi30k.yaml --run-dir runs/multi30k [--data DIR] [key=value ...]
    torchrun --standalone --nproc_per_node=2 -m scripts.train ...   (DistributedDataParallel)
    python -m scripts.train ... --prepare-only   (check the config and the run folder, prepare the data)
"""
import argparse

from scripts.cli import add_config_arguments, load_config_arguments, run
from transformer.training import prepare_run, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default="runs/multi30k", help="run folder: checkpoints, TensorBoard, logs")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="check the config and that the run folder is free, prepare the data, and stop")
    args = parser.parse_args(argv)
    config = load_config_arguments(args)
    if args.prepare_only:
        prepare_run(config, args.run_dir)
    else:
        train(config, args.run_dir, args.device)
    return 0


if __name__ == "__main__":
    run(main)
