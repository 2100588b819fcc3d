"""Average the parameters of a run's last step checkpoints into avg.pt (Sec. 6.1: the last 5).

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
    last = args.last or from_dict(checkpoint.load(paths[-1])["config"]).train.average_last
    if len(paths) < last:
        log.warning(f"only {len(paths)} step checkpoints in {folder}; averaging those (raise train.keep_last to keep {last})")
    chosen = paths[-last:]
    out = checkpoint.save(checkpoint.average(chosen), folder / "avg.pt")
    log.info(f"averaged {', '.join(p.name for p in chosen)} -> {out}")
    return 0


if __name__ == "__main__":
    run(main)
