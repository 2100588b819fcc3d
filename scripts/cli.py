"""What every script shares: logging to stderr, and errors that end in a message, not a traceback."""
import logging
import os
import sys

from transformer.checkpoint import CheckpointError
from transformer.config import ConfigError
from transformer.data import DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError, ValueError, FileNotFoundError)


def add_decode_overrides(parser) -> None:
    """Translation-time settings: `decode.*` overrides on top of the checkpoint's config."""
    parser.add_argument("overrides", nargs="*", help="decode settings, e.g. decode.beam_size=1 (greedy) "
                                                     "decode.length_penalty=1.0 (default: the checkpoint's)")


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
