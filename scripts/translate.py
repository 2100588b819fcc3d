"""Translate with a trained checkpoint: one sentence, a file, standard input, or an interactive prompt.

    python -m scripts.translate --run-dir runs/multi30k --sentence "Ein Mann fährt Fahrrad."
    python -m scripts.translate --run-dir runs/multi30k < input.de > output.en    # one line out per line in
    python -m scripts.translate --ckpt runs/multi30k/checkpoints/best.pt --input in.de --output out.en
    python -m scripts.translate --run-dir runs/multi30k decode.beam_size=1 < input.de    # greedy
    python -m scripts.translate --sentence "..." decode.n_best=4 decode.scores=true       # candidates, scores
    python -m scripts.translate --input in.de decode.sampling=true decode.top_p=0.9        # sampled
    python -m scripts.translate --ckpt a.pt b.pt --input in.de                            # an ensemble
    python -m scripts.translate --sentence "..." --attention attention.png   # and its cross-attention
"""
import argparse
import contextlib
import sys

from scripts.cli import add_translator_arguments, load_translator, run
from transformer.translation import Translator, read_file, read_lines


def interactive(translator: Translator) -> None:
    src, tgt = translator.config.data.src_lang, translator.config.data.tgt_lang
    print(f"Type a sentence in '{src}' and press Enter for its '{tgt}' translation; Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            line = input(f"{src}> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        print(*(f"{tgt}: {out}" for out in translator.output_lines([line])), sep="\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentence", help="translate this sentence and exit")
    parser.add_argument("--input", help="file to translate (default: standard input)")
    parser.add_argument("--output", help="file to write (default: standard output)")
    parser.add_argument("--attention", help="with --sentence: draw the translation's cross-attention into this "
                                            "picture (.png, .svg, .pdf), a row per layer, heads side by side")
    add_translator_arguments(parser)
    args = parser.parse_args(argv)
    if args.sentence is not None and not args.sentence.strip():
        parser.error("--sentence is empty: give the text to translate, e.g. --sentence \"Ein Hund läuft.\"")
    if args.attention and (args.sentence is None or args.engine != "torch"):
        parser.error("--attention draws the translation of --sentence by the project's model (not ENGINE=ct2)")
    _, translator = load_translator(args)
    if args.sentence is not None:
        print(*translator.output_lines([args.sentence]), sep="\n")
        if args.attention:
            from transformer.pictures import translation_attention  # matplotlib: only when drawing

            translation_attention(translator, args.sentence).savefig(args.attention, dpi=120)
            print(f"cross-attention: {args.attention}", file=sys.stderr)
    elif args.input is None and sys.stdin.isatty():
        interactive(translator)
    else:
        lines = read_file(args.input) if args.input else read_lines(sys.stdin.buffer)
        with open(args.output, "w", encoding="utf-8") if args.output else contextlib.nullcontext(sys.stdout) as out:
            translator.translate_stream(lines, out)
    return 0


if __name__ == "__main__":
    run(main)
