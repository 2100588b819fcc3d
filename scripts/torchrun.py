"""torchrun, as `make train NPROC=N` and the README's command for several machines launch it: the
same arguments and behaviour, without its tracebacks where the ranks already said what happened:

- a rank ended on an error the user can fix (exit status 2, its one line printed): status 2, no
  failure report; any other failure keeps the report;
- Ctrl-C or SIGTERM: torchrun passes it to the ranks, which save a checkpoint and say how to
  resume; then status 128 + the signal's number;
- on several machines, the one hosting the rendezvous ends its run, and the rendezvous with it, as
  soon as its ranks fail: torchrun on the others, asking it whether machines wait to join while
  their own ranks are still saying why they stop, met a lost connection (C++ frames, a traceback).
  Here a lost rendezvous means that no machine waits, and those ranks' statuses decide.

It sets OMP_NUM_THREADS=1 where unset, as torchrun does with a banner about it: each rank chooses
its threads itself (train.threads, else the cores shared among the machine's ranks). Without
--log-dir, torchrun makes a folder for the ranks' logs under the temporary directory and leaves it;
here it is removed at the end when no log was written to it.

    python -m scripts.torchrun --standalone --nproc-per-node=2 -m scripts.train [ARGS]
"""
import logging
import os
import runpy
import shutil
import signal
import sys
import tempfile
from pathlib import Path


def none_once_lost(num_nodes_waiting):
    """The rendezvous handler's count of machines waiting to join (torchrun asks while its ranks are
    healthy), zero once the rendezvous is gone."""
    from torch.distributed.elastic.rendezvous import RendezvousConnectionError

    def nodes_waiting(handler) -> int:
        try:
            return num_nodes_waiting(handler)
        except RendezvousConnectionError:
            return 0
    return nodes_waiting


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # torch reads its C++ log level as it loads: this process does not show its store's warnings (a lost
    # connection, with C++ frames); the ranks get the environment as it was
    quiet = "TORCH_CPP_LOG_LEVEL" not in os.environ  # else the user's level, here and in the ranks
    if quiet:
        os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler

    if quiet:
        del os.environ["TORCH_CPP_LOG_LEVEL"]
    # its only warnings: a heartbeat or the closing could not reach the rendezvous, which is gone
    logging.getLogger(DynamicRendezvousHandler.__module__).setLevel(logging.ERROR)
    DynamicRendezvousHandler.num_nodes_waiting = none_once_lost(DynamicRendezvousHandler.num_nodes_waiting)
    logs = Path(tempfile.mkdtemp(prefix="torchrun-"))
    tempfile.tempdir = str(logs)  # this process's only: the ranks' environment is unchanged
    try:
        runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)
    except ChildFailedError as error:
        codes = {failure.exitcode for failure in error.failures.values()}
        if 2 not in codes or not codes <= {2, -signal.SIGTERM}:  # SIGTERM: torchrun stopping the other ranks
            raise
        sys.exit(2)
    except SignalException as stop:
        sys.exit(128 + stop.sigval)
    finally:
        if not any(path.is_file() for path in logs.rglob("*")):
            shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
