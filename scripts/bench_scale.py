"""Data at the paper's scale (`make bench-scale`): a synthetic corpus of N pairs, prepared from scratch,
started from its cache, trained to step 100 by one process and by two.

    python -m scripts.bench_scale [--pairs 4500000] [--config configs/multi30k.yaml] [--max-tokens N] [--json FILE]

The corpus comes from ../shared/tools/make_scale_corpus.py (Multi30k recombined; 4.5M pairs have
about half the words of WMT14 en-de). Reported, as JSON plus a table: preparation time and peak
resident memory from scratch; seconds from `make train` to its first step from the cache; resident
memory of each training process at step 100 on Multi30k and on the corpus, with one process and
with NPROC=2, as RSS and as PSS (pages shared by processes split between them: a memory-mapped corpus
and the libraries count once per machine), in all and by kind (the prepared data's mapped files, other
files, private memory); batching time per epoch. One process's step holds the config's
`train.max_tokens` a side, or --max-tokens. Every process holds a part that no step size changes
(Python, torch, the model and Adam's state), so the larger the step, the nearer two processes that
split it come to one.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.benchmark import machine
from scripts.cli import run
from transformer.batching import epoch_steps
from transformer.config import load_config
from transformer.data import find_corpus, prepare
from transformer.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT.parent / "shared" / "tools" / "make_scale_corpus.py"
# name: processes, and whether they split one process's batch (train.max_tokens / 2: the same step)
RUNS = {"multi30k": (1, False), "corpus": (1, False), "multi30k_nproc2": (2, False), "corpus_nproc2": (2, False),
        "corpus_nproc2_split": (2, True)}
# the run log's lines on the way to the first step, to tell which part of a slow start was slow
START = {"runtime": "runtime:", "data": "data:", "model": "new run ", "batches": "batches:", "step 1": "step 1 |"}
PREPARE = ("import json, resource, sys; from transformer.config import load_config; from transformer.data import "
           "prepare; prepare(load_config(sys.argv[1], sys.argv[2:])); "
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)")


def make_corpus(multi30k: Path, folder: Path, pairs: int) -> Path:
    if not (folder / "complete").is_file():
        if not TOOL.is_file():
            raise UserError(f"{TOOL} not found; it builds the synthetic corpus")
        subprocess.run([sys.executable, str(TOOL), str(multi30k), str(folder), str(pairs)], check=True)
        (folder / "complete").touch()
    return folder


def preparation(config: str, corpus: Path, env: dict) -> dict:
    """Seconds and peak resident memory of a fresh process preparing the corpus with empty caches."""
    tic = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PREPARE, config, f"data.path={corpus}"], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"preparation failed:\n{done.stderr[-3000:]}")
    return {"seconds": round(time.perf_counter() - tic, 1), "peak_rss_gib": round(float(done.stdout.split()[-1]), 2)}


def batching(config, env: dict) -> float:
    """Seconds to batch one epoch of the prepared corpus."""
    train = prepare(config, env["TRANSFORMER_CACHE"]).train
    tic = time.perf_counter()
    epoch_steps(train.src.lengths, train.tgt.lengths, config.train.max_tokens, seed=config.train.seed)
    return round(time.perf_counter() - tic, 1)


def memory(pid: int, cache: Path) -> dict:
    """RSS and PSS of a process in GiB, in all and of its three kinds of pages: the prepared data mapped
    from files under `cache`, other files (the libraries), and private memory (heap, stacks)."""
    kb, kind = {f"{kind}_{key}": 0 for kind in ("data", "files", "private") for key in ("rss", "pss")}, None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        field, _, value = line.partition(":")
        if " " in field:  # a mapping's first line: address range, permissions, offset, device, inode[, path]
            path = line.split(maxsplit=5)[5:]
            kind = "private" if not path or not path[0].startswith("/") else \
                "data" if path[0].startswith(f"{cache}/") else "files"
        elif field in ("Rss", "Pss"):
            kb[f"{kind}_{field.lower()}"] += int(value.split()[0])
    kb |= {key: sum(kb[f"{kind}_{key}"] for kind in ("data", "files", "private")) for key in ("rss", "pss")}
    return {key: round(n / 2**20, 3) for key, n in kb.items()}


def ranks() -> list[int]:
    """Python processes training now (torchrun's workers; not torchrun, make or a shell make starts)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if Path(argv[0]).name.startswith("python") and "scripts.train" in argv and "scripts.torchrun" not in argv:
            found.append(int(entry.name))
    return sorted(found)


def train_100(config: str, step_tokens: int, corpus: Path, nproc: int, split: bool, run_dir: Path, env: dict,
              cache: Path) -> dict:
    """`make train` to step 100: seconds to its first step, and each process's memory at step 100."""
    args = (f"train.max_tokens={step_tokens // (nproc if split else 1)} train.max_steps=100 train.log_every=1 "
            "train.valid_every=1000 train.save_every=1000 train.valid_bleu=false "
            "decode.tune_length_penalties=[]")  # memory, not BLEU
    command = ["make", "-s", "train", f"CONFIG={config}", f"RUN={run_dir}", f"DATA={corpus}", f"NPROC={nproc}",
               f"ARGS={args}"]
    tic = time.perf_counter()
    result, lines, start = {}, [], {}
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        for line in process.stdout:
            lines.append(line)
            for name, mark in START.items():
                if mark in line and name not in start:
                    start[name] = round(time.perf_counter() - tic, 1)
            if "step 100 |" in line:
                result["processes"] = [memory(pid, cache) for pid in ranks()]
    if process.returncode or "processes" not in result:
        raise RuntimeError(f"{' '.join(command)} failed:\n{''.join(lines[-40:])}")
    result |= {"first_step_s": start["step 1"], "start_s": start}
    for key in result["processes"][0]:
        result[f"{key}_gib"] = round(sum(p[key] for p in result["processes"]), 3)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4_500_000)
    parser.add_argument("--config", default="configs/multi30k.yaml")
    parser.add_argument("--max-tokens", type=int, help="tokens a side in one process's step (default: the config's)")
    parser.add_argument("--work", default="runs/bench-scale", help="corpus and runs; the corpus is kept for reuse")
    parser.add_argument("--json", default="runs/bench_scale.json")
    args = parser.parse_args(argv)
    multi30k = find_corpus(load_config(args.config).data)
    work = Path(args.work).resolve()
    corpus = make_corpus(multi30k, work / f"corpus-{args.pairs}", args.pairs)
    step_tokens = args.max_tokens or load_config(args.config).train.max_tokens
    report = {"machine": machine(), "pairs": args.pairs, "config": args.config, "max_tokens": step_tokens}
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        env = {**os.environ, "TRANSFORMER_CACHE": f"{scratch}/cache", "HF_DATASETS_CACHE": f"{scratch}/hf"}
        print(f"preparing {args.pairs:,} pairs from scratch", file=sys.stderr)
        report["preparation"] = preparation(args.config, corpus, env)
        preparation(args.config, multi30k, env)  # so every training below starts from a cache
        on_corpus = load_config(args.config, [f"data.path={corpus}", f"train.max_tokens={step_tokens}"])
        report["batching_s_per_epoch"] = batching(on_corpus, env)
        for name, (nproc, split) in RUNS.items():
            data = corpus if name.startswith("corpus") else multi30k
            print(f"training to step 100: {name}", file=sys.stderr)
            report[name] = train_100(args.config, step_tokens, data, nproc, split, Path(scratch) / f"run-{name}",
                                     env, Path(scratch))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(table(report) + f"\n\n(full report: {args.json})")
    return 0


def table(r: dict) -> str:
    m, prep = r["machine"], r["preparation"]
    lines = [f"machine      {m['cpu']} | {m['cores']} cores | torch {m['torch']}",
             f"corpus       {r['pairs']:,} synthetic pairs, {r['max_tokens']:,} tokens a side in one process's step",
             f"preparation  {prep['seconds']} s from scratch | peak RSS {prep['peak_rss_gib']} GiB",
             f"from cache   first training step {r['corpus']['first_step_s']} s after `make train` (log lines at "
             + ", ".join(f"{name} {s} s" for name, s in r["corpus"]["start_s"].items()) + ")",
             f"batching     {r['batching_s_per_epoch']} s an epoch (between two steps, as each epoch begins)",
             "", "at step 100         processes  first step   RSS GiB (each)             PSS GiB (each)"]
    each = lambda t, key: "(" + " + ".join(f"{p[key]:.2f}" for p in t["processes"]) + ")"
    for name in RUNS:
        t = r[name]
        lines.append(f"  {name:<19} {len(t['processes']):>7}  {t['first_step_s']:>8} s   {t['rss_gib']:>5.2f} "
                     f"{each(t, 'rss'):<19}  {t['pss_gib']:>5.2f} {each(t, 'pss')}")
    lines += ["", "by kind, all processes  data RSS / PSS    files RSS / PSS    private RSS / PSS"]
    for name in RUNS:
        t = r[name]
        lines.append(f"  {name:<21}" + "".join(f"  {t[kind + '_rss_gib']:>5.2f} / {t[kind + '_pss_gib']:<5.2f}     "
                                               for kind in ("data", "files", "private")))
    one, added = r["corpus"], r["corpus"]["rss_gib"] - r["multi30k"]["rss_gib"]
    ratio = lambda t, kind="": (f"{t[kind + 'rss_gib'] / one[kind + 'rss_gib']:.2f}x one (RSS), "
                                f"{t[kind + 'pss_gib'] / one[kind + 'pss_gib']:.2f}x (PSS)")
    # what the corpus costs, against the same processes on Multi30k: held once, it costs two as much as one
    cost = lambda name: r[name]["pss_gib"] - r[name.replace("corpus", "multi30k")]["pss_gib"]
    lines += ["", f"the corpus adds {added:+.2f} GiB RSS to a process; it adds {cost('corpus'):+.2f} GiB PSS to one "
                  f"process and {cost('corpus_nproc2'):+.2f} to two together "
                  f"({cost('corpus_nproc2') / cost('corpus'):.2f}x);",
              f"two processes on it hold {ratio(r['corpus_nproc2'])};",
              f"two sharing one process's step (train.max_tokens / 2 each) hold {ratio(r['corpus_nproc2_split'])}:",
              f"  of the prepared data's pages {ratio(r['corpus_nproc2_split'], 'data_')}, of private memory "
              f"{ratio(r['corpus_nproc2_split'], 'private_')}"]
    return "\n".join(lines)


if __name__ == "__main__":
    run(main)
