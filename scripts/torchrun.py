"""torchrun, as `make train NPROC=N` launches it: the same arguments and behaviour, without its
tracebacks where the ranks already said what happened:

- a rank ended on an error the user can fix (exit status 2, its one line printed): status 2, no
  failure report; any other failure keeps the report;
- Ctrl-C or SIGTERM: torchrun passes it to the ranks, which save a checkpoint and say how to
  resume; then status 128 + the signal's number.

It sets OMP_NUM_THREADS=1 where unset, as torchrun does with a banner about it: each rank chooses
its threads itself (train.threads, else the cores shared among the machine's ranks). Without
--log-dir, torchrun makes a folder for the ranks' logs under the temporary directory and leaves it;
here it is removed at the end when no log was written to it.

    python -m scripts.torchrun --standalone --nproc-per-node=2 -m scripts.train [ARGS]
"""
import os
import runpy
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
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
