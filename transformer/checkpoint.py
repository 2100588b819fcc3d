"""Self-contained checkpoints: written atomically, checked on load, averaged as in Sec. 6.1.

A checkpoint holds the model, optimizer, schedule step, RNG states, data position, the resolved
config and the tokenizer, so it alone can resume training or translate. Only tensors, plain
containers and strings go in, so `torch.load(weights_only=True)` reads it.

    runs/<name>/checkpoints/step_0001000.pt ...  the last `train.keep_last` steps of the save grid,
                                                 and the newest (a stop's resume point)
    runs/<name>/checkpoints/best.pt              best validation BLEU
    runs/<name>/checkpoints/avg.pt               average of the last steps (make average)
"""
from __future__ import annotations

import logging
import os
import re
import shlex
from pathlib import Path

import torch

from .config import from_dict
from .errors import UserError, disk_full

log = logging.getLogger(__name__)

FORMAT = "transformer-nmt checkpoint"
STEP_FILE = re.compile(r"step_(\d+)\.pt$")


class CheckpointError(UserError):
    """A file that is missing, truncated, not a checkpoint of this project, or without room to be written."""


def save(state: dict, path: str | Path) -> Path:
    """A checkpoint file: the state with this project's format marker, written atomically."""
    return write_atomically({"format": FORMAT, **state}, path)


def write_atomically(obj, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, flush to disk, then rename: never half a file.
    The temporary name is per process, so processes writing one path at once do not race."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writes = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            writes = _Writes(f)
            torch.save(obj, writes)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except Exception as error:
        if disk_full(error) or (writes is not None and disk_full(writes.error)):
            raise CheckpointError(f"no space left on the disk of {path.parent} to write {path.name}: free some "
                                  f"(train.keep_last keeps fewer checkpoints) and run the command again; a training "
                                  f"resumes from its last checkpoint") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)  # left only by a failed or interrupted write
    return path


class _Writes:
    """A file's `write` that keeps the OSError it raised: torch.save reports a failed write (a full disk)
    as an unrelated RuntimeError ("unexpected pos ...")."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.f.flush()


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train one first with `make train`")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        if path.stat().st_size == 0 or "zip archive" in str(error) or "central directory" in str(error):
            raise CheckpointError(f"{path} is truncated or corrupt ({error.__class__.__name__}); "
                                  f"delete it or pick another checkpoint") from None
        raise CheckpointError(f"{path} is not a checkpoint of this project ({str(error).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no '{FORMAT}' marker)")
    return state


def step_checkpoints(folder: str | Path) -> list[Path]:
    """step_*.pt files, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if STEP_FILE.search(p.name)), key=step_of)


def remove_killed_saves(folder: str | Path) -> None:
    """Temporary files of step saves killed mid-write (kill -9, or a preemption's grace period running
    out during the stop's save): each as large as a checkpoint, and never read. Call it holding the run
    lock: step checkpoints are written only by the training that holds it."""
    for tmp in Path(folder).glob(".step_*.tmp"):
        log.info(f"removing {tmp}, left by a save that was killed")
        tmp.unlink(missing_ok=True)


def latest_good(folder: str | Path, map_location="cpu") -> tuple[Path, dict] | None:
    """The newest step checkpoint that loads; damaged ones are reported and skipped."""
    for path in reversed(step_checkpoints(folder)):
        try:
            return path, load(path, map_location)
        except CheckpointError as error:
            log.warning(f"skipping {error}")
    return None


def step_of(path: Path) -> int:
    return int(STEP_FILE.search(path.name)[1])


def on_grid(paths: list[Path], every: int) -> list[Path]:
    """The checkpoints written every `every` steps: the equally spaced ones to average. A stop (Ctrl-C,
    max_minutes) or the save_every_minutes timer writes off the grid, a resume point only."""
    return [p for p in paths if step_of(p) % every == 0]


def prune(folder: str | Path, keep_last: int, every: int) -> None:
    """Keep the last `keep_last` grid checkpoints and the newest one, so a stop just after a grid save
    neither evicts a grid checkpoint nor gets averaged as a near-copy of it."""
    if keep_last <= 0:
        return
    paths = step_checkpoints(folder)
    keep = set(on_grid(paths, every)[-keep_last:] + paths[-1:])
    for path in paths:
        if path not in keep:
            path.unlink(missing_ok=True)


def find_for_inference(run: str | Path | None, ckpt: str | Path | None) -> Path:
    """CKPT= if given, else the run's avg.pt, best.pt, or newest step checkpoint."""
    if ckpt:
        return Path(ckpt)
    folder = Path(run) / "checkpoints"
    for name in ("avg.pt", "best.pt"):
        if (folder / name).is_file():
            return folder / name
    steps = step_checkpoints(folder)
    if steps:
        return steps[-1]
    raise CheckpointError(f"no checkpoint in {folder}; train one first: make train RUN={shlex.quote(str(run))}")


def average(paths: list[Path]) -> dict:
    """Sec. 6.1: the element-wise mean of the models' parameters; the rest comes from the newest.

    Checkpoints are read one at a time into a float64 running sum, so memory holds two models, not N."""
    total = None
    for path in paths:
        newest = load(path)
        newest.pop("optimizer", None)  # the largest part of a checkpoint, and meaningless averaged
        floats = {k: v.double() for k, v in newest["model"].items() if v.is_floating_point()}
        total = floats if total is None else {k: total[k].add_(v) for k, v in floats.items()}
    model = {k: total[k].div(len(paths)).to(v.dtype) if k in total else v for k, v in newest["model"].items()}
    averaged = {k: v for k, v in newest.items() if k not in ("format", "decode")}  # decode: tuned for one model
    averaged["model"] = model
    averaged["averaged"] = [p.name for p in paths]
    return averaged


def average_run(run_dir: str | Path, last: int | None = None) -> Path:
    """Average the run's last `last` grid checkpoints (default: its train.average_last) into avg.pt.

    Only checkpoints of the save grid (every train.save_every steps) are averaged, equally spaced as
    in the paper; one written at a stop is a resume point."""
    folder = Path(run_dir) / "checkpoints"
    paths = step_checkpoints(folder)
    if not paths:
        raise CheckpointError(f"no step checkpoints in {folder}; train first: "
                              f"make train RUN={shlex.quote(str(run_dir))}")
    train = from_dict(load(paths[-1])["config"]).train
    last = last or train.average_last
    grid = on_grid(paths, train.save_every)
    if not grid:
        raise CheckpointError(f"no checkpoint in {folder} lies on the save grid (every {train.save_every} "
                              f"steps); train longer or lower train.save_every")
    if len(grid) < last:
        log.warning(f"only {len(grid)} checkpoints every {train.save_every} steps in {folder}; averaging those "
                    f"(raise train.keep_last to keep {last})")
    chosen = grid[-last:]
    out = save(average(chosen), folder / "avg.pt")
    log.info(f"averaged {', '.join(p.name for p in chosen)} -> {out}")
    return out
