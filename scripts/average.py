"""Average the parameters of a run's last step checkpoints into avg.pt (Sec. 6.1: the last 5).

Only checkpoints of the save grid (every train.save_every steps) are averaged, equally spaced as in
the paper; one written at a stop is a resume point.

    python -m scripts.average --run-dir runs/multi30k [--last 5]
"""
import argparse
import logging
from pathlib import Path

from scripts.cli import run
from transformer import checkpoint
from transformer.config import from_dict

log = logging.getLogger("average")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/multi30k")
    parser.add_argument("--last", type=int, help="how many (default: the run's train.average_last)")
    args = parser.parse_args(argv)
    folder = Path(args.run_dir) / "checkpoints"
    paths = checkpoint.step_checkpoints(folder)
    if not paths:
        raise checkpoint.CheckpointError(f"no step checkpoints in {folder}; train first: make train RUN={args.run_dir}")
    train = from_dict(checkpoint.load(paths[-1])["config"]).train
    last = args.last or train.average_last
    grid = checkpoint.on_grid(paths, train.save_every)
    if not grid:
        raise checkpoint.CheckpointError(f"no checkpoint in {folder} lies on the save grid (every {train.save_every} "
                                         f"steps); train longer or lower train.save_every")
    if len(grid) < last:
        log.warning(f"only {len(grid)} checkpoints every {train.save_every} steps in {folder}; averaging those "
                    f"(raise train.keep_last to keep {last})")
    chosen = grid[-last:]
    out = checkpoint.save(checkpoint.average(chosen), folder / "avg.pt")
    log.info(f"averaged {', '.join(p.name for p in chosen)} -> {out}")
    return 0


if __name__ == "__main__":
    run(main)
