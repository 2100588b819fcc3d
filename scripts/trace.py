"""One sentence through a model, stage by stage: the paper's name and the tensor's shape of each.

    python -m scripts.trace --run-dir runs/multi30k --sentence "Ein Mann fährt Fahrrad."
    python -m scripts.trace --run-dir runs/none --config configs/tiny.yaml --sentence "..."   # untrained

With no checkpoint in the run folder (and no --ckpt), an untrained model of --config is traced,
with the vocabulary of its prepared data.
"""
import argparse

from scripts.cli import run
from transformer.trace import describe, trace


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
    translator = _translator(args)
    src = translator.encode([args.sentence.strip()])[0]
    tgt = translator.translate_ids([src], beam_size=1)[0][0].tokens
    print(describe(*trace(translator.model, translator.tokenizer, src, tgt)))
    return 0


def _translator(args):
    import torch

    from transformer.checkpoint import CheckpointError, find_for_inference
    from transformer.translation import Translator

    try:
        path = find_for_inference(args.run_dir, args.ckpt)
    except CheckpointError:  # no checkpoint in the run: the config's model, untrained
        path = None
    if path is not None:
        print(f"model: {path}")
        return Translator.from_checkpoint(path, "cpu")

    from transformer.config import load_config
    from transformer.data import prepare
    from transformer.model import Transformer

    config = load_config(args.config, args.overrides)
    tokenizer = prepare(config).tokenizer
    torch.manual_seed(config.train.seed)
    print(f"model: untrained, {args.config} (no checkpoint in {args.run_dir})")
    return Translator(Transformer(config.model, tokenizer.vocab_size), tokenizer, config)


if __name__ == "__main__":
    run(main)
