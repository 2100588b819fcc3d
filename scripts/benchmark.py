"""Speed and memory in one run, as ratios to this machine's own matmul peak (`make bench`).

    python -m scripts.benchmark [--config configs/multi30k.yaml] [--data DIR] [--parts data training decoding]
                                [--ckpt FILE] [--steps 40] [--json FILE]

Measures: the matmul peak (float32, bfloat16) on the training device; training throughput in
source + target tokens/s, achieved GFLOP/s and the hours train.max_steps would take, for float32
and bf16 autocast, through the real training step (on a GPU where there is one); peak memory;
data preparation time (from scratch and cached) and how soon a run without any corpus fails;
decoding sentences/s on the test split for greedy and beam 4, with and without the key/value
cache; beam-4 sentences/s and BLEU of each way to decode on a CPU (float32, bfloat16, int8, and
the CTranslate2 export in float32 and int8). Machine and library versions included.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from scripts.cli import add_config_arguments, load_config_arguments, run
from transformer import checkpoint, runtime
from transformer.batching import epoch_steps, make_batches, padding_fraction
from transformer.data import DataError, prepare, read_split
from transformer.export import CT2Translator, ExportError, export
from transformer.metrics import bleu
from transformer.model import Transformer, forward_flops
from transformer.optim import make_optimizer
from transformer.training import Context, train_step
from transformer.translation import Translator

PARTS = ["data", "training", "decoding"]


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import datasets
    import sacrebleu
    import tokenizers

    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "datasets": datasets.__version__,
            "tokenizers": tokenizers.__version__, "sacrebleu": sacrebleu.__version__,
            "cpu_bf16": runtime.cpu_has_bf16()}


def matmul_peak(dtype: torch.dtype, device: torch.device, samples: int = 9) -> float:
    """Median GFLOP/s of an n x n matrix product: the ceiling the model's matmuls can approach."""
    n = 1024 if device.type == "cpu" else 8192
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(samples):
        reps, tic = 0, time.perf_counter()
        while time.perf_counter() - tic < 0.2:
            a @ b
            reps += 1
        sync()
        rates.append(2 * n**3 * reps / (time.perf_counter() - tic) / 1e9)
    return statistics.median(rates)


def data_preparation(config) -> dict:
    """Seconds to prepare the data from scratch and from its cache, and to fail without any corpus."""
    with tempfile.TemporaryDirectory() as cache:
        tic = time.perf_counter()
        prepare(config, cache)
        fresh = time.perf_counter() - tic
        tic = time.perf_counter()
        prepare(config, cache)
        cached = time.perf_counter() - tic
        nowhere = replace(config.data, path="", local_dirs=(f"{cache}/none",))  # the hub is probed as a user's run does
        tic = time.perf_counter()
        try:
            read_split(nowhere, nowhere.train_split)
            no_corpus = None  # the hub answered: nothing to time
        except DataError:
            no_corpus = round(time.perf_counter() - tic, 2)
    return {"from_scratch_s": round(fresh, 2), "cached_s": round(cached, 2), "no_corpus_error_s": no_corpus}


def training_throughput(config, prepared, rt: runtime.Runtime, precision: str, steps: int, peak: float,
                        warmup: int = 3) -> dict:
    """Tokens/s and GFLOP/s (and its fraction of the matmul `peak`) of the real training step, and the
    hours that train.max_steps such steps take."""
    dtype, reason = runtime.choose_precision(precision, rt.device)
    rt = replace(rt, autocast_dtype=dtype, reason=reason)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    model = Transformer(config.model, prepared.tokenizer.vocab_size).to(rt.device)
    ctx = Context(config, rt, prepared, model, model, make_optimizer(model, config.train))
    src_lens, tgt_lens = prepared.train.src.lengths, prepared.train.tgt.lengths
    groups = epoch_steps(src_lens, tgt_lens, config.train.max_tokens, config.train.seed,
                         accumulate=config.train.accumulate)
    tokens = 0
    for k, group in enumerate(groups[: warmup + steps]):
        if k == warmup:
            tic = time.perf_counter()
        result = train_step(ctx, group, k + 1)
        tokens += result.tokens if k >= warmup else 0
    seconds = time.perf_counter() - tic  # train_step ends reading the gradient norm: the device is done
    V = prepared.tokenizer.vocab_size
    flops = sum(3 * forward_flops(config.model, V, int(src_lens[i]) + 1, int(tgt_lens[i]) + 1)
                for group in groups[warmup : warmup + steps] for batch in group.batches for i in batch)
    gflops = flops / seconds / 1e9
    row = {"device": str(rt.device), "precision": rt.precision, "steps": steps, "tokens_per_s": round(tokens / seconds),
           "gflops": round(gflops, 1), "fraction_of_peak": round(gflops / peak, 3),
           "hours_for_max_steps": round(config.train.max_steps * seconds / steps / 3600, 2)
           if config.train.max_steps else None,  # train.max_steps=0: no limit
           "peak_rss_gib": round(peak_rss_gib(), 2)}
    if rt.device.type == "cuda":
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(rt.device) / 2**30, 2)
    return row


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def decoding_speed(translator: Translator, sentences: list[str], beam: int, use_cache: bool) -> dict:
    ids = translator.encode(sentences)
    tic = time.perf_counter()
    hyps = translator.translate_ids(ids, beam_size=beam, use_cache=use_cache)
    seconds = time.perf_counter() - tic
    out_tokens = sum(len(h[0].tokens) + 1 for h in hyps if h)
    return {"beam": beam, "cache": use_cache, "sentences": len(sentences),
            "sentences_per_s": round(len(sentences) / seconds, 1), "output_tokens_per_s": round(out_tokens / seconds)}


def decoding_translator(config, prepared, path: str | None) -> tuple[Translator, str]:
    """The checkpoint's translator (default: runs/multi30k's), or an untrained model: the slowest case."""
    if path is None:
        try:
            path = str(checkpoint.find_for_inference("runs/multi30k", None))
        except checkpoint.CheckpointError:
            model = Transformer(config.model, prepared.tokenizer.vocab_size)
            return Translator(model, prepared.tokenizer, config), "untrained model (outputs run to the length limit)"
    return Translator.from_checkpoint(path, "cpu"), path


def decoding(translator: Translator, uncached: int) -> list[dict]:
    """The test split with greedy and beam 4 search; then its first sentences with and without the cache."""
    test = read_split(translator.config.data, translator.config.data.test_split).src_text
    rows = [decoding_speed(translator, test, beam, True) for beam in (1, 4)]
    for beam in (1, 4):
        cached, recomputed = (decoding_speed(translator, test[:uncached], beam, c) for c in (True, False))
        recomputed["cache_speedup"] = round(cached["sentences_per_s"] / recomputed["sentences_per_s"], 2)
        rows += [cached, recomputed]
    return rows


def inference(path: str, split) -> list[dict]:
    """Beam-4 sentences/s and BLEU on the test split for each engine and precision, in one run."""
    options = [("torch", precision) for precision in ("float32", "bfloat16", "int8")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        try:
            export(path, folder)
            options += [("ct2", "float32"), ("ct2", "int8")]
        except ExportError as error:
            print(f"no CTranslate2 rows: {error}", file=sys.stderr)
        for engine, precision in options:
            overrides = [f"decode.precision={precision}", "decode.beam_size=4"]
            translator = (CT2Translator(folder, "cpu", overrides) if engine == "ct2"
                          else Translator.from_checkpoint(path, "cpu", overrides))
            sources, references = (getattr(split, side) for side in ("src_text", "tgt_text"))
            tic = time.perf_counter()
            hyps = translator.translate(sources)
            seconds = time.perf_counter() - tic
            rows.append({"engine": engine, "precision": precision, "sentences": len(sources),
                         "sentences_per_s": round(len(sources) / seconds, 1),
                         "bleu": round(bleu(hyps, references, translator.tokenizer.lowercase), 2)})
    for row in rows:
        row["speedup"] = round(row["sentences_per_s"] / rows[0]["sentences_per_s"], 2)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                        help="what to measure; on a GPU, training alone gives the hours of a recipe")
    parser.add_argument("--ckpt", help="checkpoint for decoding (default: runs/multi30k's best; else untrained)")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per precision")
    parser.add_argument("--uncached", type=int, default=200, help="sentences decoded without the cache")
    parser.add_argument("--json", default="runs/bench.json")
    args = parser.parse_args(argv)
    config = load_config_arguments(args)
    report = {"machine": machine(), "config": args.config}
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores", file=sys.stderr)
    if "data" in args.parts:
        report["data_preparation"] = data_preparation(config)
    prepared = prepare(config)
    report["padding_fraction"] = padding(config, prepared)
    if "training" in args.parts:
        rt = runtime.setup(config.train)  # device and threads, once for the peak and both precisions
        peak = {p: round(matmul_peak(dtype, rt.device), 1) for p, dtype in (("float32", torch.float32),
                                                                             ("bfloat16", torch.bfloat16))}
        report["matmul_peak_gflops"] = {"device": str(rt.device), **peak}
        report["training"] = [training_throughput(config, prepared, rt, p, args.steps, peak[p]) for p in peak]
    if "decoding" in args.parts:
        translator, report["decoding_checkpoint"] = decoding_translator(config, prepared, args.ckpt)
        report["decoding"] = decoding(translator, args.uncached)
        if not report["decoding_checkpoint"].startswith("untrained"):
            data = translator.config.data
            report["inference"] = inference(report["decoding_checkpoint"], read_split(data, data.test_split))
    report["peak_rss_gib"] = round(peak_rss_gib(), 2)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # runs/ may not exist yet
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(table(report) + f"\n\n(full report: {args.json})")
    return 0


def padding(config, prepared) -> float:
    src_lens, tgt_lens = prepared.train.src.lengths, prepared.train.tgt.lengths
    return round(padding_fraction(make_batches(src_lens, tgt_lens, config.train.max_tokens, seed=1), src_lens,
                                  tgt_lens), 4)


def table(r: dict) -> str:
    m = r["machine"]
    lines = [f"machine   {m['cpu']} | {m['cores']} cores | {m['cuda'] or 'no GPU'} | torch {m['torch']} | "
             f"threads {m['threads']}", f"data      padding {r['padding_fraction']:.1%} of batch tokens"]
    if "data_preparation" in r:
        data = r["data_preparation"]
        lines[-1] += (f" | from scratch {data['from_scratch_s']} s | cached {data['cached_s']} s | no corpus: error in "
                      f"{data['no_corpus_error_s']} s")
    if "training" in r:
        peak = r["matmul_peak_gflops"]
        lines += [f"matmul    {peak['device']}: float32 {peak['float32']} | bfloat16 {peak['bfloat16']} GFLOP/s",
                  "", "training  precision  tokens/s (src+tgt)  GFLOP/s  of peak  hours for max_steps  peak RSS"]
        for t in r["training"]:
            gpu = f" | GPU {t['peak_gpu_gib']} GiB" if "peak_gpu_gib" in t else ""
            hours = "no limit" if t["hours_for_max_steps"] is None else t["hours_for_max_steps"]
            lines.append(f"          {t['precision']:<9}  {t['tokens_per_s']:>18,}  {t['gflops']:>7}  "
                         f"{t['fraction_of_peak']:>7.0%}  {hours:>19}  {t['peak_rss_gib']} GiB{gpu}")
    if "decoding" in r:
        lines += ["", f"decoding  ({r['decoding_checkpoint']})",
                  "          beam  cache  sentences  sent/s  out tok/s  cache speedup"]
        for d in r["decoding"]:
            lines.append(f"          {d['beam']:>4}  {'yes' if d['cache'] else 'no':>5}  {d['sentences']:>9}  "
                         f"{d['sentences_per_s']:>6}  {d['output_tokens_per_s']:>9}  {d.get('cache_speedup', '')}")
    if r.get("inference"):
        lines += ["", "inference beam 4, the test split", "          engine  precision  sent/s  speedup   BLEU"]
        for d in r["inference"]:
            lines.append(f"          {d['engine']:<6}  {d['precision']:<9}  {d['sentences_per_s']:>6}  "
                         f"{d['speedup']:>6.2f}x  {d['bleu']:>5.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    run(main)
