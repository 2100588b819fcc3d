"""Print a model's parameter count, per-module breakdown, training FLOPs per token and the paper ledger.

    python -m scripts.summary --config configs/base.yaml [--json] [override ...]
"""
import argparse
import json

from scripts.cli import run
from transformer import model as model_module
from transformer.config import load_config
from transformer.model import Transformer, forward_flops


def summarize(config, length: int) -> dict:
    vocab = config.tokenizer.vocab_size
    model = Transformer(config.model, vocab)
    total = sum(p.numel() for p in model.parameters())
    modules = {}
    for name, child in model.named_children():
        count = sum(p.numel() for p in child.parameters())
        if count and not (name == "src_embedding" and child is model.embedding):
            modules[name] = count
    tokens = 2 * length  # one pair of `length` source and `length` target tokens
    return {
        "parameters": total,
        "modules": modules,
        "vocab_size": vocab,
        "train_flops_per_token": 3 * forward_flops(config.model, vocab, length, length) / tokens,
        "flops_sentence_length": length,
        "ledger": ledger(),
    }


def ledger() -> list[str]:
    """The ledger table of transformer/model.py's docstring and its notes."""
    lines = model_module.__doc__.strip().splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("|")) :]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/multi30k.yaml")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--length", type=int, default=32, help="sentence length for the FLOPs figure")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.d_model=256")
    args = parser.parse_args(argv)
    info = summarize(load_config(args.config, args.overrides), args.length)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"config: {args.config}")
    print(f"parameters: {info['parameters']:,} ({info['parameters'] / 1e6:.1f}M, vocabulary {info['vocab_size']:,})")
    for name, count in info["modules"].items():
        print(f"  {name:<16} {count:>14,}")
    print(f"training FLOPs per token: {info['train_flops_per_token'] / 1e6:.1f}M "
          f"(source and target sentences of {args.length} tokens; forward + backward = 3x forward)")
    print("\npaper ledger:")
    print("\n".join(info["ledger"]))
    return 0


if __name__ == "__main__":
    run(main)
