"""Train and score every variant of a what-if grid: a table and a picture in runs/<grid>/.

    python -m scripts.ablate --grid configs/ablations/what_if.yaml [--out runs/what_if]

Finished variants are skipped, so a stopped grid (Ctrl-C) resumes where it stopped.
"""
import argparse
import logging
import shlex
from pathlib import Path

from scripts.cli import run
from transformer.ablation import Stopped, load_grid, run_grid

log = logging.getLogger(__name__)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="configs/ablations/what_if.yaml")
    parser.add_argument("--out", help="folder of the grid's runs and results (default: runs/<grid name>)")
    parser.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    out = Path(args.out or f"runs/{grid.name}")
    resume = f"the finished variants are kept; resume with: make ablate GRID={shlex.quote(args.grid)}"
    try:
        run_grid(grid, out, args.device)
    except (Stopped, KeyboardInterrupt):
        log.warning(f"stopped; {resume}")
        return 130
    print(f"{out}/results.md\n{out}/results.png")
    return 0


if __name__ == "__main__":
    run(main)
