"""What every script shares: logging to stderr, and errors that end in a message, not a traceback."""
import logging
import os
import sys

from transformer.checkpoint import CheckpointError
from transformer.config import ConfigError
from transformer.data import DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError, ValueError, FileNotFoundError)


def add_translator_arguments(parser) -> None:
    """Which checkpoint translates, on which device, with which `decode.*` overrides of its config."""
    parser.add_argument("--run-dir", default="runs/multi30k", help="run whose avg.pt, best.pt or newest step is used")
    parser.add_argument("--ckpt", help="a checkpoint file (overrides --run-dir)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("overrides", nargs="*", help="decode settings, e.g. decode.beam_size=1 (greedy) "
                                                     "decode.length_penalty=1.0 (default: the checkpoint's)")


def load_translator(args):
    """(checkpoint path, Translator) for arguments from add_translator_arguments."""
    from transformer.checkpoint import find_for_inference
    from transformer.translation import Translator

    path = find_for_inference(args.run_dir, args.ckpt)
    return path, Translator.from_checkpoint(path, args.device, args.overrides)


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s", stream=sys.stderr)


def run(main) -> None:
    """Call main(); a known user error prints `error: ...` and exits 2."""
    setup_logging()
    try:
        sys.exit(main())
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
