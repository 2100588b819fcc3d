"""Where and how the model runs: device, precision, threads, seeds, distributed setup; the signals
that stop a run and the lock that keeps one process per run folder. Decided once."""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .config import ConfigError, TrainConfig
from .errors import PeerFailed, UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain float32
    reason: str  # why this precision, printed once
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    malloc: str = ""  # on CPU: "tcmalloc" or "mimalloc" (preloaded), or "glibc, keeps freed memory"
    machines: tuple[tuple[int, str], ...] = ()  # each rank's (torchrun's node rank, host name) when distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def precision(self) -> str:
        return {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[self.autocast_dtype]

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def agree(self, reason: str | None, failure: Exception | None = None) -> str | None:
        """Data-parallel ranks stop together: any rank's reason stops all (one tiny all-reduce a step).
        A rank's `failure` is raised there once every rank knows of it; the others stop with PeerFailed
        naming the first rank that failed, before they meet its lost connection."""
        failed = failure is not None
        if not self.distributed:
            if failed:
                raise failure
            return reason
        flag = torch.tensor([2.0 if failed else 1.0 if reason else 0.0, -(self.rank if failed else self.world_size)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # the strongest reason, and the first rank that failed
        most, first_failed = flag.tolist()
        if failed:
            raise failure
        if most == 2:
            raise self.peer_failed(-int(first_failed))
        return reason or ("another rank stopped" if most else None)

    def peer_failed(self, rank: int) -> PeerFailed:
        node, host = self.machines[rank]
        return PeerFailed(rank, host, here=node == self.machines[self.rank][0])

    def main_alone(self, work):
        """work() on rank 0 alone (writing the run folder), the other ranks waiting for it; if it raises,
        `agree` raises it there and stops the others. Returns what work() returned, None on the others."""
        result = failure = None
        if self.is_main:
            try:
                result = work()
            except Exception as error:
                failure = error
        self.agree(None, failure)
        return result

    def describe(self) -> str:
        where = f"{self.device}" + (f", rank {self.rank} of {self.world_size}" if self.distributed else "")
        threads = f", {torch.get_num_threads()} threads" if self.device.type == "cpu" else ""
        malloc = f", malloc: {self.malloc}" if self.malloc else ""
        return f"runtime: {where}{threads}{malloc}, {self.precision} ({self.reason})"


class StopRequest:
    """Ctrl-C or SIGTERM: finish the step, save, exit. A second Ctrl-C aborts at once."""

    def __init__(self):
        self.reason: str | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        log.warning(f"\n{self.reason}: finishing this step and saving a checkpoint "
                    f"(Ctrl-C again aborts without saving)")

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class RunInUse(UserError):
    """Another live process is training the same run folder."""


def lock_run(run_dir: Path):
    """Hold <run>/.lock while training, so a second training of the same run refuses at once.
    The kernel releases the lock when the process ends, however it ends (kill -9 included)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunInUse(f"{run_dir} is being trained by {holder}; wait for it, stop it (Ctrl-C or kill), "
                       f"or train into another folder with RUN=runs/<new name>") from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matrix products run natively (about 2.4x float32 on a Zen 4 core)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def preloaded_malloc() -> str:
    """"tcmalloc" or "mimalloc" when that serves malloc in this process (`make` preloads one), else ""."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return ""
    return next((name for name in ("tcmalloc", "mimalloc") if f"lib{name}" in maps), "")


def resident_gib() -> float:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    By default every block over 32 MB (the (B, T, V) logits and their gradient, each step) is a fresh
    mmap that the kernel must zero page by page, and freed heap tops are trimmed: on a 2-core CPU a
    quarter to a third of a training step went to those page faults. Kept and reused instead, the
    training step runs 1.2-1.45x faster there, for up to ~1.5 GB more resident memory. Over a long
    run the kept free chunks pile up and searching them slows malloc (3.7% of the time after 3
    minutes, 11.4% after 28); a preloaded tcmalloc or mimalloc avoids both. Linux with glibc only;
    elsewhere a no-op returning False.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from <malloc.h>
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def bound_onednn_caches(capacity: int = 64) -> None:
    """Keep at most `capacity` oneDNN primitives (CPU bfloat16 matrix products) in each of torch's two
    caches, unless the environment sets them. At the default, 1024 each, the caches fill over the
    first ~100 steps with primitives for shapes that rarely come back, since every token-budget batch
    has its own (B, T): 0.5 GiB of a 2 GiB training process on Multi30k. 64 keeps nearly all the
    reuse within a step. oneDNN reads them at its first product, so this runs before one."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))  # oneDNN's own
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(capacity))  # ideep's, torch's wrapper of oneDNN


def choose_precision(requested: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    if requested == "float32":
        return None, "asked for float32"
    if requested == "bfloat16":
        return torch.bfloat16, "asked for bfloat16 autocast"
    if requested == "float16":
        if device.type != "cuda":
            raise ConfigError("train.precision=float16 needs a CUDA device; use bfloat16 or float32 on CPU")
        return torch.float16, "asked for float16 autocast with a gradient scaler"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: CUDA device supports bfloat16 (no loss scaling needed)"
        return torch.float16, "auto: CUDA device without bfloat16, float16 with a gradient scaler"
    if cpu_has_bf16():
        return torch.bfloat16, "auto: CPU has native bfloat16 matrix instructions"
    return None, "auto: CPU without native bfloat16"


def setup(cfg: TrainConfig, device: str | None = None) -> Runtime:
    """Join the process group when run under torchrun, pick device, threads, malloc, precision, seed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    malloc = ""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device} asked for, but torch sees no CUDA device; use --device cpu")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)  # plain "cuda": this rank's GPU
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_world))
        bound_onednn_caches()
        malloc = preloaded_malloc() or ("glibc, keeps freed memory" if keep_freed_memory() else "")
    if world_size > 1 and not dist.is_initialized():
        # torch._dynamo (the optimizer imports it) imported after the group keeps the group alive past
        # destroy_process_group: its threads then meet the interpreter's exit, which can abort the process
        importlib.import_module("torch._dynamo")
        # On GPUs, NCCL carries CUDA tensors (DDP's gradients) and Gloo the CPU ones (loss sums, stop flag)
        dist.init_process_group("cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo")
    machines = [None] * world_size if world_size > 1 else []
    if machines:  # to say which machine's log explains a failed rank
        dist.all_gather_object(machines, (int(os.environ.get("GROUP_RANK", "0")), socket.gethostname()))
    torch.manual_seed(cfg.seed + rank)  # ranks draw different dropout masks
    dtype, reason = choose_precision(cfg.precision, dev)
    return Runtime(dev, dtype, reason, rank, world_size, local_rank, malloc, tuple(machines))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
