"""What every script shares: logging to stderr, the config and checkpoint arguments, and one entry point.

An error the user can fix (transformer.errors.UserError, or a path the filesystem refuses) ends in
one line, `error: ...`, and exit status 2; any other exception is a bug and keeps its traceback.
"""
import errno
import logging
import os
import sys
import threading

from transformer.errors import PeerFailed, UserError, disk_full


def add_config_arguments(parser) -> None:
    """The config a run trains: --config, --data and dotted overrides (read by `load_config_arguments`)."""
    parser.add_argument("--config", default="configs/multi30k.yaml")
    parser.add_argument("--data", help="local corpus folder (sets data.path)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")


def load_config_arguments(args):
    """The Config of arguments from add_config_arguments."""
    from transformer.config import load_config

    return load_config(args.config, list(args.overrides) + ([f"data.path={args.data}"] if args.data else []))


def add_translator_arguments(parser) -> None:
    """Which checkpoint translates, on which device, with which `decode.*` overrides of its config."""
    parser.add_argument("--run-dir", default="runs/multi30k", help="run whose avg.pt, best.pt or newest step is used")
    parser.add_argument("--ckpt", nargs="+", help="a checkpoint file (overrides --run-dir); several: an ensemble")
    parser.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--engine", choices=("torch", "ct2"), default="torch",
                        help="ct2: decode with the run's CTranslate2 export (make export), in <run>/ct2")
    parser.add_argument("overrides", nargs="*", help="decode settings, e.g. decode.beam_size=1 (greedy) "
                                                     "decode.length_penalty=1.0 (default: the checkpoint's)")


def load_translator(args):
    """(checkpoint paths, Translator) for arguments from add_translator_arguments."""
    from transformer.checkpoint import find_for_inference
    from transformer.translation import Translator

    if args.engine == "ct2":
        from pathlib import Path

        from transformer.errors import InputError
        from transformer.export import CT2Translator

        if args.ckpt and len(args.ckpt) > 1:
            raise InputError("ENGINE=ct2 translates with one exported model; ensembles run in the project's decoder")
        folder = Path(args.ckpt[0]) if args.ckpt else Path(args.run_dir) / "ct2"
        return [folder], CT2Translator(folder, args.device or "cpu", args.overrides)
    paths = [find_for_inference(args.run_dir, ckpt) for ckpt in args.ckpt or [None]]
    return paths, Translator.from_checkpoint(paths, args.device, args.overrides)


def run(main) -> None:
    """Call main() and exit with its status; a UserError prints `error: ...` and exits 2."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s", stream=sys.stderr)
    # TensorBoard writes from a thread whose error its caller meets at the next call and reports in one
    # line: a full disk there should not also print the thread's traceback
    report = threading.excepthook
    threading.excepthook = lambda args: None if disk_full(args.exc_value) else report(args)
    try:
        sys.exit(main())
    except PeerFailed as peer:  # another rank failed and reports it
        if peer.here:  # on this machine: status 0, or torchrun stops that rank before it reports
            sys.exit(0)
        print(f"error: rank {rank} stops: rank {peer.rank} failed on {peer.host}, and its log there says why",
              file=sys.stderr)
        sys.exit(2)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # the filesystem refuses a path the user chose: a read-only disk, permissions
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not error.filename:
            raise
        print(f"error: cannot use {error.filename}: {error.strerror}; fix its permissions or choose another path "
              f"(RUN=, DATA=, OUT=, TRANSFORMER_CACHE=)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        sys.exit(130)
