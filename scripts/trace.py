"""One sentence through a model, stage by stage: the paper's name and the tensor's shape of each.

    python -m scripts.trace --run-dir runs/multi30k --sentence "Ein Mann fährt Fahrrad."
    python -m scripts.trace --run-dir runs/none --config configs/tiny.yaml --sentence "..."   # untrained

With no checkpoint in the run folder (and no --ckpt), an untrained model of --config is traced,
with the vocabulary of its prepared data.
"""
import argparse

from scripts.cli import run
from transformer.trace import describe, model_to_trace, trace


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentence", required=True, help="the source sentence")
    parser.add_argument("--run-dir", default="runs/multi30k", help="run whose avg.pt, best.pt or newest step is used")
    parser.add_argument("--ckpt", help="a checkpoint file (overrides --run-dir)")
    parser.add_argument("--config", default="configs/multi30k.yaml", help="the untrained model's config")
    parser.add_argument("overrides", nargs="*", help="overrides of the untrained model's config")
    args = parser.parse_args(argv)
    if not args.sentence.strip():
        parser.error('--sentence is empty: give the text to trace, e.g. SENTENCE="Ein Mann fährt Fahrrad."')
    translator, what = model_to_trace(args.run_dir, args.ckpt, args.config, args.overrides)
    print(f"model: {what}")
    src = translator.encode([args.sentence.strip()])[0]
    tgt = translator.translate_ids([src], beam_size=1)[0][0].tokens
    print(describe(*trace(translator.model, translator.tokenizer, src, tgt)))
    return 0


if __name__ == "__main__":
    run(main)
