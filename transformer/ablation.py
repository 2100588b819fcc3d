"""The what-if lab: variants of one config, each trained by the project's own training for the same
number of steps and scored the same way, in one table and one picture.

    runs/<grid>/<variant>/               a normal run folder (make translate RUN=... works on it)
    runs/<grid>/<variant>/result.json    written last: a variant that has it is finished and skipped;
                                         one trained with the same config in another grid is reused
    runs/<grid>/results.md               the table, with the spread of the base variant over seeds
    runs/<grid>/results.png              BLEU bars and validation-loss curves

A grid file (configs/ablations/*.yaml):

    base: configs/multi30k.yaml          the config every variant starts from
    steps: 600                           the budget: optimizer steps of every variant
    overrides: {model.d_model: 128}      the lab's base model: applied to every variant
    seeds: [1, 2, 3]                     the base variant is trained once with each
    variants: {dot: {model.attention_score: dot}, ...}

Every variant validates (loss only) ten times; when it ends, its length penalty is chosen on val (as
training always does) and it is scored with beam search on the validation and test splits.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import checkpoint
from .config import Config, ConfigError, load_config, to_plain
from .evaluation import evaluate, test_set
from .training import train
from .translation import Translator
from .tuning import tune

log = logging.getLogger(__name__)

CURVE_POINTS = 10  # validations a variant: the points of its validation-loss curve


class Stopped(Exception):
    """Training was stopped (Ctrl-C or SIGTERM) before the variant's budget."""


@dataclass(frozen=True)
class Grid:
    path: str  # the grid file
    name: str
    base: str
    steps: int
    overrides: dict  # dotted key -> value, for every variant
    seeds: tuple[int, ...]
    variants: dict  # name -> {dotted key: value}

    @property
    def base_runs(self) -> dict[str, dict]:
        """The base variant once per seed: base, base_seed2, ..."""
        return {"base" if i == 0 else f"base_seed{seed}": {"train.seed": seed} for i, seed in enumerate(self.seeds)}

    def runs(self) -> dict[str, dict]:
        """Every run of the grid, in order: the base variant once per seed, then the variants."""
        return self.base_runs | self.variants

    def config(self, changes: dict) -> Config:
        every = max(1, self.steps // CURVE_POINTS)
        budget = {"train.max_steps": self.steps, "train.save_every": self.steps, "train.valid_every": every,
                  "train.max_minutes": 0, "train.max_epochs": 0, "train.early_stopping": 0, "train.valid_bleu": False}
        return load_config(self.base, [f"{k}={json.dumps(v)}" for k, v in (self.overrides | budget | changes).items()])


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file: every variant's config is built, so a bad key fails before training."""
    path = Path(path)
    if not path.is_file():
        choices = ", ".join(sorted(str(p) for p in Path("configs/ablations").glob("*.yaml")))
        raise ConfigError(f"grid file {path} not found" + (f"; available: {choices}" if choices else ""))
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"grid file {path} is not valid YAML: {error}") from None
    known = {"base", "steps", "overrides", "seeds", "variants"}
    form = (f"{path}: a grid has the keys {', '.join(sorted(known))}: steps a positive integer, seeds a list of "
            f"integers, overrides and variants mappings (name: {{model.attention_score: dot}}); see "
            f"transformer/ablation.py")
    if not isinstance(values, dict) or set(values) - known or not isinstance(values.get("variants"), dict):
        raise ConfigError(form)
    try:
        steps, seeds = int(values.get("steps", 1000)), tuple(int(s) for s in values.get("seeds") or (1,))
    except (TypeError, ValueError):
        raise ConfigError(form) from None
    if steps < 1 or not isinstance(values.get("overrides") or {}, dict):
        raise ConfigError(form)
    variants = {str(k): v or {} for k, v in values["variants"].items()}
    grid = Grid(str(path), path.stem, str(values.get("base", "configs/multi30k.yaml")), steps,
                values.get("overrides") or {}, seeds, variants)
    for name, changes in grid.runs().items():
        if not re.fullmatch(r"[\w.-]+", name) or not isinstance(changes, dict):
            raise ConfigError(f"{path}: variant {name!r} needs a plain name (letters, digits, _ . -) and a mapping "
                              f"of dotted keys to values")
        try:
            grid.config(changes)
        except ConfigError as error:
            raise ConfigError(f"{path}, variant {name}: {error}") from None
    return grid


def run_variant(grid: Grid, name: str, changes: dict, folder: Path, device: str | None = None) -> dict:
    """Train one variant to the budget (resuming it), choose its length penalty on val, score it."""
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    config = grid.config(changes)
    twin = _finished_twin(config, folder)
    if twin is not None:  # the same run, finished by another grid (the two shipped grids share their base)
        result = {**json.loads((twin / "result.json").read_text()), "variant": name, "changes": changes,
                  "trained_in": str(twin)}
        _write(done, result)
        return result
    state = train(config, folder, device)
    if state.step < config.train.max_steps:
        raise Stopped(name)
    path = checkpoint.step_checkpoints(folder / "checkpoints")[-1]
    saved = checkpoint.load(path)
    if "decode" not in saved and tune(path, device=device) is not None:  # a stop can fall between the two
        saved = checkpoint.load(path)
    tuned = saved.get("decode")
    translator = Translator.from_states([saved], [path], device)
    split, sources, references = test_set(translator)
    test = evaluate(translator, split, sources, references, folder, [path])
    if tuned is not None:  # the chosen length penalty's row of the sweep is val scored as test is
        chosen = next(r for r in tuned["table"] if r["length_penalty"] == tuned["settings"]["length_penalty"])
    else:  # nothing to choose (greedy, or no penalties given)
        valid = evaluate(translator, *test_set(translator, translator.config.data.valid_split), folder, [path])
        chosen = {"length_penalty": translator.config.decode.length_penalty, "bleu": round(valid["bleu"]["score"], 2)}
    rows = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    result = {"variant": name, "changes": changes, "parameters": sum(p.numel() for p in translator.model.parameters()),
              "train_loss": next(r["loss"] for r in reversed(rows) if "loss" in r),
              "valid_ppl": next(r["valid_ppl"] for r in reversed(rows) if "valid_ppl" in r),
              "valid_bleu": chosen["bleu"], "test_bleu": round(test["bleu"]["score"], 2), "test_split": split,
              "length_penalty": chosen["length_penalty"], "minutes": round(state.seconds / 60, 1),
              "valid_loss_curve": [[r["step"], r["valid_loss"]] for r in rows if "valid_loss" in r]}
    _write(done, result)
    return result


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")  # renamed when complete: a half-written result is never trusted
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def _finished_twin(config: Config, folder: Path) -> Path | None:
    """A finished variant of another grid beside this one, trained with exactly this config."""
    plain = to_plain(config.to_dict())
    for done in sorted(folder.parent.parent.glob("*/*/result.json")):
        other = done.parent
        if other.parent != folder.parent and "trained_in" not in json.loads(done.read_text()) and \
                yaml.safe_load((other / "config.yaml").read_text()) == plain:
            return other
    return None


def run_grid(grid: Grid, out: Path, device: str | None = None) -> list[dict]:
    """Every variant of the grid, finished ones read back; the report rewritten after each."""
    results = []
    for name, changes in grid.runs().items():
        log.info(f"=== {grid.name}: {name} {changes or ''}")
        results.append(run_variant(grid, name, changes, out / name, device))
        write_report(grid, results, out)
    return results


def seed_spread(grid: Grid, results: list[dict]) -> str:
    """The base variant's BLEU over its seeds: how far chance alone moves a score."""
    base = [r for r in results if r["variant"] in grid.base_runs]
    if len(base) < 2:
        return ""
    parts = []
    for key, label in (("valid_bleu", "val"), ("test_bleu", "test")):
        scores = [r[key] for r in base]
        mean = sum(scores) / len(scores)
        sd = (sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) ** 0.5
        parts.append(f"{label} BLEU {mean:.2f} +- {sd:.2f} (range {min(scores):.2f}-{max(scores):.2f})")
    return f"The base variant over {len(base)} seeds: " + "; ".join(parts) + "."


def write_report(grid: Grid, results: list[dict], out: Path) -> None:
    """results.md and results.png in `out`."""
    from .pictures import ablation_figure

    spread = seed_spread(grid, results)
    overrides = ", ".join(f"{k}={v}" for k, v in grid.overrides.items())
    lines = [f"# {grid.name}: {grid.steps} steps a variant", "",
             f"`make ablate GRID={grid.path}`: {grid.base} with {overrides or 'no changes'}; "
             f"beam search with the length penalty chosen on val; train loss is label-smoothed, over the last "
             f"logged steps.", ""]
    if spread:
        lines += [spread, ""]
    lines += ["| variant | changes | parameters | train loss | val ppl | val BLEU | test BLEU | minutes |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        changes = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r["changes"].items()) or "-"
        lines.append(f"| {r['variant']} | {changes} | {r['parameters']:,} | {r['train_loss']:.3f} | "
                     f"{r['valid_ppl']:.2f} | {r['valid_bleu']:.2f} | {r['test_bleu']:.2f} | {r['minutes']:.1f} |")
    reused = [r for r in results if "trained_in" in r]
    if reused:
        lines += ["", "Trained with the same config in another grid, and reused: " +
                  ", ".join(f"{r['variant']} ({r['trained_in']})" for r in reused) + "."]
    lines += ["", f"![{grid.name}](results.png)", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines))
    figure = ablation_figure(results, f"{grid.name}: {grid.steps} steps a variant", set(grid.base_runs))
    figure.savefig(out / "results.png", dpi=110)
