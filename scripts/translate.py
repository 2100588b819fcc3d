"""Translate with a trained checkpoint: one sentence, a file, standard input, or an interactive prompt.

    python -m scripts.translate --run-dir runs/multi30k --sentence "Ein Mann fährt Fahrrad."
    python -m scripts.translate --run-dir runs/multi30k < input.de > output.en    # one line out per line in
    python -m scripts.translate --ckpt runs/multi30k/checkpoints/best.pt --input in.de --output out.en
    python -m scripts.translate --run-dir runs/multi30k decode.beam_size=1 < input.de    # greedy
"""
import argparse
import logging
import sys

from scripts.cli import add_translator_arguments, load_translator, run
from transformer.translation import Translator

log = logging.getLogger("translate")
CHUNK = 2000  # lines translated at a time when streaming


def read_lines(stream) -> list[str]:
    """Decode bytes line by line; invalid UTF-8 is replaced (and reported), never a crash or a lost line."""
    lines = []
    for number, raw in enumerate(stream, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            log.warning(f"line {number}: invalid UTF-8, undecodable bytes replaced by U+FFFD")
        lines.append(line.rstrip("\r\n"))
    return lines


def translate_stream(translator: Translator, lines: list[str], out) -> None:
    for start in range(0, len(lines), CHUNK):
        for hyp in translator.translate(lines[start : start + CHUNK]):
            out.write(hyp + "\n")
        out.flush()


def interactive(translator: Translator) -> None:
    src, tgt = translator.config.data.src_lang, translator.config.data.tgt_lang
    print(f"Type a sentence in '{src}' and press Enter for its '{tgt}' translation; Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            line = input(f"{src}> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        print(f"{tgt}: {translator.translate([line])[0]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentence", help="translate this sentence and exit")
    parser.add_argument("--input", help="file to translate (default: standard input)")
    parser.add_argument("--output", help="file to write (default: standard output)")
    add_translator_arguments(parser)
    args = parser.parse_args(argv)
    if args.sentence is not None and not args.sentence.strip():
        parser.error("--sentence is empty: give the text to translate, e.g. --sentence \"Ein Hund läuft.\"")
    _, translator = load_translator(args)
    if args.sentence is not None:
        print(translator.translate([args.sentence])[0])
        return 0
    if args.input is None and sys.stdin.isatty():
        interactive(translator)
        return 0
    if args.input:
        with open(args.input, "rb") as f:
            lines = read_lines(f)
    else:
        lines = read_lines(sys.stdin.buffer)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            translate_stream(translator, lines, out)
    else:
        translate_stream(translator, lines, sys.stdout)
    return 0


if __name__ == "__main__":
    run(main)
