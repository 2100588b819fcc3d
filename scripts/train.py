"""Train a Transformer, or resume the run if its folder already holds checkpoints.

    python -m scripts.train --config configs/multi30k.yaml --run-dir runs/multi30k [--data DIR] [key=value ...]
    torchrun --standalone --nproc_per_node=2 -m scripts.train ...   (DistributedDataParallel)
    python -m scripts.train ... --prepare-only   (check the config and the run folder, prepare the data)
"""
import argparse

from scripts.cli import run
from transformer.config import load_config
from transformer.training import prepare_run, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/multi30k.yaml")
    parser.add_argument("--run-dir", default="runs/multi30k", help="run folder: checkpoints, TensorBoard, logs")
    parser.add_argument("--data", help="local corpus folder (sets data.path)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="check the config and that the run folder is free, prepare the data, and stop")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"data.path={args.data}"] if args.data else [])
    config = load_config(args.config, overrides)
    if args.prepare_only:
        prepare_run(config, args.run_dir)
    else:
        train(config, args.run_dir, args.device)
    return 0


if __name__ == "__main__":
    run(main)
