"""The recipe (schedule, loss), checkpoints, resume, signals and data parallelism."""
import errno
import glob
import importlib.metadata
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT, logged_losses, tiny_config, tiny_overrides
from transformer import checkpoint, runtime
from transformer.loss import label_smoothed_loss
from transformer.optim import lr_at
from transformer.training import TrainingError, train


def test_learning_rate_is_the_paper_formula_and_peaks_at_warmup():
    d_model, warmup = 512, 4000
    for step in [1, 10, 100, 3999, 4000, 4001, 10000, 100000]:
        expected = d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
        assert lr_at(step, d_model, warmup) == pytest.approx(expected, rel=1e-12)
    rates = [lr_at(s, d_model, warmup) for s in range(1, 20000)]
    assert max(range(len(rates)), key=rates.__getitem__) + 1 == warmup
    assert lr_at(100, 256, 50, factor=2.0) == pytest.approx(2 * lr_at(100, 256, 50))


TCMALLOC = next(iter(glob.glob("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4")
                     + glob.glob("/usr/lib64/libtcmalloc_minimal.so.4")), None)
try:  # the wheel `make install` adds
    MIMALLOC = next(str(f.locate()) for f in importlib.metadata.files("cmeel-mimalloc") if f.name == "libmimalloc.so")
except (importlib.metadata.PackageNotFoundError, StopIteration):
    MIMALLOC = None
WITHOUT_PRELOAD = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC")}


def runtime_line(preload: str = "") -> str:
    """The run log's runtime line from a fresh CPU process, with LD_PRELOAD set to `preload` or unset."""
    env = WITHOUT_PRELOAD | ({"LD_PRELOAD": preload} if preload else {})
    code = "from transformer import runtime, config; print(runtime.setup(config.TrainConfig(), 'cpu').describe())"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout


def preload_under_make(*args: str) -> str:
    """The LD_PRELOAD that `make` gives its commands."""
    return subprocess.run(["make", "-s", *args, "--eval=preload: ; @echo $$LD_PRELOAD", "preload"], cwd=ROOT,
                          env=WITHOUT_PRELOAD, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc tuning is glibc's")
def test_freed_memory_is_kept_where_glibc_allows_it():
    assert runtime.keep_freed_memory()  # mallopt accepted both settings
    assert "malloc: glibc, keeps freed memory" in runtime_line()  # and the run log says so


@pytest.mark.skipif(TCMALLOC is None and MIMALLOC is None, reason="neither tcmalloc nor the mimalloc wheel installed")
def test_make_preloads_tcmalloc_or_else_mimalloc():
    shown = preload_under_make()
    assert os.path.realpath(shown) == os.path.realpath(TCMALLOC or MIMALLOC)
    assert f"malloc: {'tcmalloc' if TCMALLOC else 'mimalloc'}" in runtime_line(shown)
    assert preload_under_make("MALLOC=") == ""


SETUPS = {"training": "runtime.setup(config.TrainConfig(), 'cpu')",
          "decoding": "Translator(small_model(), None, config.Config())"}


def primitive_reuse(env: dict, process: str) -> list[str]:
    """ideep's cache capacity, then oneDNN's cache hit or miss for bfloat16 matrix products of 80 shapes and
    the first again, in a fresh CPU process set up for `process` (SETUPS); no hits or misses where torch
    does not run them through oneDNN."""
    code = textwrap.dedent(f"""
        import os, torch
        from tests.conftest import small_model
        from transformer import runtime, config
        from transformer.translation import Translator
        {SETUPS[process]}
        print("ideep", os.environ["LRU_CACHE_CAPACITY"], flush=True)
        w = torch.randn(32, 64, dtype=torch.bfloat16)
        for n in [*range(10, 90), 10]:
            torch.randn(n, 32, dtype=torch.bfloat16) @ w
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env | {"ONEDNN_VERBOSE": "2"},
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return [re.search(r"ideep \d+", out)[0]] + re.findall(r"primitive,create:(cache_\w+),", out)


@pytest.mark.parametrize("process", SETUPS)
def test_onednn_keeps_few_primitives_unless_the_environment_says_otherwise(process):
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    bounded = primitive_reuse(env, process)
    if len(bounded) == 1:
        pytest.skip("torch runs no bfloat16 product through oneDNN on this CPU")
    assert bounded[0] == "ideep 64" and bounded[1:] == ["cache_miss"] * 81  # the first shape was evicted
    kept = primitive_reuse(env | {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "1024"}, process)
    assert kept[0] == "ideep 1024" and kept[1:] == ["cache_miss"] * 80 + ["cache_hit"]


def test_loss_without_smoothing_is_cross_entropy_ignoring_padding():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 5, 11), torch.randint(1, 11, (3, 5))
    target[0, 3:] = 0
    target[2, 1:] = 0
    loss, nll = label_smoothed_loss(logits, target, eps=0.0, pad_id=0)
    expected = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=0, reduction="sum")
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, expected)


def test_smoothed_loss_matches_a_hand_computed_case():
    logits = torch.tensor([[[2.0, 0.0, 1.0, -1.0], [0.5, 0.5, 0.5, 0.5]]])  # V = 4
    target = torch.tensor([[2, 0]])  # the second position is padding
    eps = 0.1
    z = [2.0, 0.0, 1.0, -1.0]
    log_denominator = torch.tensor(z).exp().sum().log().item()
    logp = [v - log_denominator for v in z]
    # q = (1 - eps) on the target + eps / V everywhere: loss = -sum_v q_v log p_v
    expected = -((1 - eps) * logp[2] + eps / 4 * sum(logp))
    loss, nll = label_smoothed_loss(logits, target, eps=eps, pad_id=0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert nll.item() == pytest.approx(-logp[2], rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_gradient_equals_autograd_of_cross_entropy(dtype):
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 50).to(dtype).requires_grad_()
    target = torch.randint(0, 50, (4, 6))
    reference = F.cross_entropy(logits.float().view(-1, 50), target.view(-1), ignore_index=0, label_smoothing=0.1,
                                reduction="sum")
    (expected,) = torch.autograd.grad(reference, logits)
    loss, _ = label_smoothed_loss(logits, target, eps=0.1, pad_id=0)
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-4)
    atol = 1e-3 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(grad.float(), expected.float(), rtol=1e-2, atol=atol)


def test_resume_continues_exactly_as_if_never_stopped(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    train(tiny_config(small_corpus, "train.max_steps=12", "train.save_every=100"), tmp_path / "whole")
    train(tiny_config(small_corpus, "train.max_steps=5"), tmp_path / "split")  # stops, saves step 5
    killed_save = tmp_path / "split" / "checkpoints" / ".step_0000006.pt.999999999.tmp"
    killed_save.write_bytes(b"half a checkpoint")  # what a kill -9 during a save leaves
    train(tiny_config(small_corpus, "train.max_steps=12"), tmp_path / "split")  # resumes at step 6
    assert not killed_save.exists()
    whole, split = logged_losses(tmp_path / "whole"), logged_losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 13))
    assert [split[s] for s in range(6, 13)] == [whole[s] for s in range(6, 13)]  # identical, not just close
    state = checkpoint.load(checkpoint.step_checkpoints(tmp_path / "split" / "checkpoints")[-1])
    assert state["state"]["epoch"] >= 1  # the run crossed an epoch boundary


def test_a_resume_with_other_batching_goes_on_from_the_same_fraction_of_the_epoch(small_corpus, tmp_path, monkeypatch,
                                                                                   caplog):
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    first = train(tiny_config(small_corpus, "train.max_steps=12", "train.max_tokens=400"), tmp_path / "run")
    state = train(tiny_config(small_corpus, "train.max_steps=14", "train.max_tokens=3000"), tmp_path / "run")
    assert state.epoch_steps < first.epoch_step < first.epoch_steps  # the old position lies past the new epoch
    fraction = first.epoch_step * state.epoch_steps // first.epoch_steps
    assert f"goes on from step {fraction} of {state.epoch_steps}, the same fraction" in caplog.text
    assert state.step == 14 and (state.epoch, state.epoch_step) == divmod(fraction + 2, state.epoch_steps)


def test_max_epochs_stops_at_the_epoch_boundary_and_saves_without_validating_twice(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    state = train(tiny_config(small_corpus, "train.max_epochs=2", "train.valid_every=1", "train.save_every=1000"),
                  tmp_path / "run")
    assert (state.epoch, state.epoch_step) == (2, 0)
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "valid_loss" in r] == list(range(1, state.step + 1))  # the last one once
    saved = checkpoint.load(checkpoint.step_checkpoints(tmp_path / "run" / "checkpoints")[-1])["state"]
    assert (saved["step"], saved["epoch"]) == (state.step, 2)


def test_truncated_or_foreign_checkpoints_are_reported_and_skipped(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    for step in (1, 2):
        checkpoint.save({"model": {"w": torch.full((3,), float(step))}}, folder / f"step_{step:07d}.pt")
    newest = folder / "step_0000002.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load(newest)
    path, state = checkpoint.latest_good(folder)
    assert path.name == "step_0000001.pt" and state["model"]["w"][0] == 1.0
    assert "step_0000002.pt" in caplog.text
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint of this project"):
        checkpoint.load(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(text)


def test_a_save_interrupted_mid_write_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = checkpoint.save({"model": {"w": torch.ones(2)}}, tmp_path / "step_0000001.pt")

    def interrupted(obj, f):  # Ctrl-C while the bytes go to disk
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"model": {"w": torch.zeros(2)}}, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert checkpoint.load(path)["model"]["w"].tolist() == [1.0, 1.0]


def test_a_full_disk_is_named_and_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    import io

    path = checkpoint.save({"model": {"w": torch.ones(2)}}, tmp_path / "step_0000001.pt")

    class FullDisk(io.FileIO):  # room for 100 more bytes
        def write(self, data):
            if self.tell() + len(data) > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    monkeypatch.setattr(checkpoint, "open", lambda file, mode: io.BufferedWriter(FullDisk(file, mode)), raising=False)
    with pytest.raises(checkpoint.CheckpointError, match=f"no space left on the disk of {tmp_path} to write"):
        checkpoint.save({"model": {"w": torch.zeros(1000)}}, path)  # torch.save itself says "unexpected pos"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert checkpoint.load(path)["model"]["w"].tolist() == [1.0, 1.0]


def test_a_full_disk_under_the_run_log_or_tensorboard_is_one_error_and_the_run_resumes(small_corpus, tmp_path,
                                                                                        monkeypatch, capsys):
    from tensorboard.summary.writer import record_writer

    import scripts.train
    from scripts import cli
    from transformer.monitor import Monitor

    full, run = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), tmp_path / "run"
    train(tiny_config(small_corpus, "train.max_steps=4", "train.save_every=2"), run)
    append = Monitor._append

    def append_until_full(self, row):
        if row.get("step") == 6:  # the disk fills in the middle of a line
            with open(self.run_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(row)[:10])
            raise full
        append(self, row)

    monkeypatch.setattr(Monitor, "_append", append_until_full)
    with pytest.raises(TrainingError, match=f"no space left on the disk of {re.escape(str(run))}: .* resumes from"):
        train(tiny_config(small_corpus, "train.max_steps=8", "train.save_every=2"), run)
    monkeypatch.undo()

    def write(self, data):  # TensorBoard writes from a thread of its own
        raise full

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)  # what prints a thread's traceback
    command = ["--config", "configs/tiny.yaml", "--run-dir", str(run),
               *tiny_overrides(small_corpus, "train.max_steps=8", "train.save_every=2")]
    with pytest.raises(SystemExit) as exit:  # through the script, as `make train` runs it
        cli.run(lambda: scripts.train.main(command))
    assert exit.value.code == 2 and "error: no space left on the disk" in capsys.readouterr().err
    assert thread_errors == []
    monkeypatch.undo()
    assert train(tiny_config(small_corpus, "train.max_steps=8"), run).step == 8
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]  # what plot.py reads
    assert [r["step"] for r in rows if "loss" in r][-1] == 8


def test_averaging_is_the_mean_of_the_parameters(tmp_path):
    paths = []
    for step in (1, 2, 3):
        paths.append(checkpoint.save({"model": {"w": torch.full((2,), float(step)), "n": torch.tensor(step)},
                                      "state": {"step": step}, "optimizer": {"m": torch.ones(2)}},
                                     tmp_path / f"step_{step:07d}.pt"))
    averaged = checkpoint.average(paths)
    assert averaged["model"]["w"].tolist() == [2.0, 2.0] and averaged["state"]["step"] == 3
    assert averaged["model"]["n"].item() == 3 and "optimizer" not in averaged  # integers from the newest


def test_a_stop_checkpoint_is_kept_for_resuming_but_never_evicts_or_joins_the_grid(tmp_path):
    def steps():
        return [checkpoint.step_of(p) for p in checkpoint.step_checkpoints(tmp_path)]

    for step in (500, 1000, 1500, 2000, 2040):  # 2040: Ctrl-C just after the grid save at 2000
        checkpoint.save({"state": {"step": step}}, tmp_path / f"step_{step:07d}.pt")
        checkpoint.prune(tmp_path, keep_last=3, every=500)
    assert steps() == [1000, 1500, 2000, 2040]
    grid = checkpoint.on_grid(checkpoint.step_checkpoints(tmp_path), 500)
    assert [checkpoint.step_of(p) for p in grid] == [1000, 1500, 2000]
    checkpoint.save({"state": {"step": 2500}}, tmp_path / "step_0002500.pt")  # resumed to the next grid save
    checkpoint.prune(tmp_path, keep_last=3, every=500)
    assert steps() == [1500, 2000, 2500]


def _env(tmp_path):
    return {**os.environ, "TRANSFORMER_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}


def test_sigterm_finishes_the_step_and_leaves_a_loadable_checkpoint(small_corpus, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "scripts.train", "--config", "configs/tiny.yaml", "--run-dir", str(run),
               "--data", str(small_corpus), "train.max_steps=100000", "train.log_every=1", "train.valid_bleu=false",
               "train.save_every=100000", "train.save_every_minutes=1000"]
    process = subprocess.Popen(command, cwd=ROOT, env=_env(tmp_path), stderr=subprocess.PIPE, text=True)
    log = run / "train_log.jsonl"
    deadline = time.time() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "resume with: make train" in err
    path, state = checkpoint.latest_good(run / "checkpoints")
    assert state["state"]["step"] >= 3 and "optimizer" in state and "tokenizer" in state


def test_a_live_training_locks_its_run_folder_and_a_killed_one_releases_it(small_corpus, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "scripts.train", "--config", "configs/tiny.yaml", "--run-dir", str(run),
               "--data", str(small_corpus), "train.valid_bleu=false", "train.log_every=1"]
    first = subprocess.Popen([*command, "train.max_steps=100000"], cwd=ROOT, env=_env(tmp_path),
                             stderr=subprocess.DEVNULL)
    log = run / "train_log.jsonl"
    deadline = time.time() + 120
    while not log.is_file():
        assert first.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.2)
    second = subprocess.run([*command, "train.max_steps=5"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"is being trained by process {first.pid} on" in second.stderr
    first.kill()  # kill -9: no handler runs, the kernel drops the lock
    first.wait(timeout=60)
    third = subprocess.run([*command, "train.max_steps=5"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                           text=True, timeout=120)
    assert third.returncode == 0, third.stderr[-2000:]


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(small_corpus, tmp_path):
    # two micro-batches a rank: the first's gradients stay local (no_sync), the second's all-reduce both
    common = ["--config", "configs/tiny.yaml", "--data", str(small_corpus), "train.max_steps=4",
              "train.valid_bleu=false", "model.dropout=0", "train.max_tokens=400"]
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-m", "scripts.train", "--run-dir", str(tmp_path / "one"), *common,
                    "train.accumulate=4"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          f"--log-dir={tmp_path / 'torchrun'}", "-m", "scripts.train", "--run-dir",
                          str(tmp_path / "two"), *common, "train.threads=1", "train.accumulate=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = checkpoint.load(tmp_path / "one" / "checkpoints" / "step_0000004.pt")["model"]
    two = checkpoint.load(tmp_path / "two" / "checkpoints" / "step_0000004.pt")["model"]
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5)


def test_an_error_on_rank_0_alone_or_on_every_rank_is_said_once_and_a_bug_keeps_its_traceback(small_corpus, tmp_path):
    # full: rank 0 alone writes the run folder, and the other ranks wait in a collective when its disk
    # fills; bug: the same place raises a bug; nan: every rank stops on non-finite steps; start: rank 0's
    # disk fills as it opens the run's log, before the first step
    script = tmp_path / "train_failing.py"
    script.write_text(textwrap.dedent("""
        import atexit, errno, os, sys, time
        import scripts.train
        from scripts import cli
        from transformer import training
        from transformer.monitor import Monitor

        loss = training.label_smoothed_loss

        def append(self, row):
            if row.get("step") == 4:
                raise OSError(errno.ENOSPC, "No space left on device") if sys.argv[1] == "full" else KeyError("bug")
        def opening(self, *args):
            raise OSError(errno.ENOSPC, "No space left on device")
        if os.environ["RANK"] == "0":
            Monitor._append = append
            if sys.argv[1] == "start":
                Monitor.__init__ = opening
        if os.environ.get("SLOW_EXIT") == "1":  # after the machine hosting the rendezvous has ended its run
            atexit.register(time.sleep, 1)
        if sys.argv[1] == "nan":  # every rank: non-finite from the first step
            training.label_smoothed_loss = lambda *args: [x * float("nan") for x in loss(*args)]
        cli.run(lambda: scripts.train.main(sys.argv[2:]))
    """))
    common = ["--config", "configs/tiny.yaml",
              *tiny_overrides(small_corpus, "train.max_steps=8", "train.threads=1", "train.max_bad_steps=3")]
    temp = tmp_path / "temp"  # torchrun's empty log folders, one a run, must not pile up there
    temp.mkdir()
    env = {**_env(tmp_path), "TMPDIR": str(temp)}
    ended = {}
    for kind in ("full", "bug", "nan"):
        ended[kind] = subprocess.run([sys.executable, "-m", "scripts.torchrun", "--standalone", "--nproc_per_node=2",
                                      str(script), kind, "--run-dir", str(tmp_path / kind), *common],
                                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    full, bug = ended["full"], ended["bug"]
    assert full.returncode == 2, full.stderr[-3000:]
    assert f"error: no space left on the disk of {tmp_path / 'full'}" in full.stderr
    assert "Traceback" not in full.stderr and "ChildFailedError" not in full.stderr, full.stderr[-3000:]
    assert bug.returncode == 1 and "KeyError: 'bug'" in bug.stderr and "ChildFailedError" in bug.stderr
    assert "Connection closed by peer" not in full.stderr + bug.stderr  # rank 1 met no lost peer
    nan = ended["nan"]  # an error every rank meets: said once
    assert nan.returncode == 2 and nan.stderr.count("error: ") == 1 and "non-finite 3 steps" in nan.stderr, nan.stderr

    # two machines, one rank each, meeting as the README's multi-node command does: rank 0 fails in the
    # loop, before the first step, or finds the run folder locked by a live training (this process); or
    # one machine lacks the data
    runs = {kind: tmp_path / f"machines-{kind}" for kind in ("full", "start", "locked", "data")}
    missing = tmp_path / "missing"
    said = {"full": f"no space left on the disk of {runs['full']}",
            "start": f"no space left on the disk of {runs['start']}",
            "locked": f"{runs['locked']} is being trained by process {os.getpid()}",
            "data": f"data folder {missing} does not exist"}
    host = re.escape(socket.gethostname())
    stops = rf"error: rank (\d) stops: rank (?!\1)\d failed on {host}, and its log there says why"
    with runtime.lock_run(runs["locked"]):
        for kind, run in runs.items():
            with socket.socket() as s:
                s.bind(("localhost", 0))
                port = s.getsockname()[1]
            machines = []
            for machine in range(2):  # the first hosts the rendezvous; the second's rank ends a second late
                machines.append(subprocess.Popen(
                    [sys.executable, "-m", "scripts.torchrun", "--nnodes=2", "--nproc-per-node=1",
                     "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}", str(script),
                     kind if kind in ("full", "start") else "full", "--run-dir", str(run), *common,
                     *([f"data.path={missing}"] if kind == "data" and machine else [])],
                    cwd=ROOT, env={**env, "SLOW_EXIT": str(machine)}, stderr=subprocess.PIPE, text=True))
                deadline = time.time() + 120
                while not _listening(port):
                    assert machines[0].poll() is None and time.time() < deadline, machines[0].communicate()
                    time.sleep(0.1)
            logs = [(m.communicate(timeout=300)[1], m.returncode) for m in machines]
            assert [code for _, code in logs] == [2, 2], logs
            assert not any(noise in log for log, _ in logs for noise in ("Traceback", "Rendezvous", "frame #")), logs
            failed, other = sorted((log for log, _ in logs), key=lambda log: f"error: {said[kind]}" not in log)
            assert f"error: {said[kind]}" in failed, (kind, logs)
            assert re.search(stops, other) and other.count("error: ") == 1, (kind, logs)
    assert not [path for path in temp.iterdir() if path.name.startswith(("torchelastic_", "torchrun-"))]


def _listening(port: int) -> bool:
    """Whether a process of this machine listens on TCP `port`."""
    tables = "".join(path.read_text() for path in map(Path, ("/proc/net/tcp", "/proc/net/tcp6")) if path.exists())
    rows = map(str.split, tables.splitlines())
    return any(f[1].endswith(f":{port:04X}") and f[3] == "0A" for f in rows if len(f) > 3)  # 0A: LISTEN


def _as_rank(rank: int, store: str, work, results) -> None:
    """Rank `rank` of two data-parallel processes whose collectives give up after 2 s: report work(rank)."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=2))
    try:
        results.put((rank, work(rank)))
    except Exception as error:  # noqa: BLE001 - reported to the test
        results.put((rank, repr(error)))
    dist.destroy_process_group()


def as_two_ranks(work, store) -> dict:
    """{rank: what work(rank) returned, or its error} from two ranks meeting through the file `store`."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    results = fork.Queue()
    ranks = [fork.Process(target=_as_rank, args=(r, str(store), work, results)) for r in (0, 1)]
    for rank in ranks:
        rank.start()
    got = dict(results.get(timeout=60) for _ in ranks)
    for rank in ranks:
        rank.join(timeout=30)
    return got


def test_ranks_wait_for_the_data_longer_than_collectives_may_take(tmp_path):
    # NCCL's collectives give up after 10 minutes; downloading and preparing WMT14 can take longer
    from transformer import training

    def work(rank):
        training.prepare = lambda config: time.sleep(5 if rank == 0 else 0) or f"prepared by {rank}"
        return training._prepare(None, runtime.Runtime(torch.device("cpu"), None, "", rank, 2, rank))

    assert as_two_ranks(work, tmp_path / "store") == {0: "prepared by 0", 1: "prepared by 1"}


def test_a_machine_without_the_data_stops_every_rank_each_with_its_own_error(tmp_path):
    from transformer import training
    from transformer.data import DataError
    from transformer.errors import PeerFailed

    def work(rank):  # rank 1, alone on machine "b", finds no corpus
        def prepare(config):
            if rank == 1:
                raise DataError("no corpus here")
            return "prepared"

        training.prepare = prepare
        try:
            return training._prepare(None, runtime.Runtime(torch.device("cpu"), None, "", rank, 2, 0,
                                                           machines=((0, "a"), (1, "b"))))
        except PeerFailed as peer:
            return peer.rank, peer.host, peer.here

    assert as_two_ranks(work, tmp_path / "store") == {0: (1, "b", False), 1: "DataError('no corpus here')"}


def test_ranks_that_find_different_checkpoints_refuse_to_train(tmp_path):
    from transformer.training import _same_step_on_every_rank

    same = as_two_ranks(lambda rank: _same_step_on_every_rank(40, tmp_path), tmp_path / "store-same")
    assert same == {0: None, 1: None}
    apart = as_two_ranks(lambda rank: _same_step_on_every_rank(40 if rank == 0 else 0, tmp_path),
                         tmp_path / "store-apart")
    assert all("different checkpoints" in error and "(steps 0 to 40)" in error for error in apart.values())


def test_non_finite_steps_are_skipped_then_stop_the_run_with_a_checkpoint(small_corpus, tmp_path, monkeypatch, caplog):
    from transformer import training

    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    real_loss = training.label_smoothed_loss
    calls = []

    def poisoned(*args, **kwargs):  # the first 2 steps are fine, then every loss is NaN
        loss, nll = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), nll) if len(calls) > 2 else (loss, nll)

    monkeypatch.setattr(training, "label_smoothed_loss", poisoned)
    config = tiny_config(small_corpus, "train.max_steps=50", "train.max_bad_steps=3", "train.save_every=1000")
    with pytest.raises(training.TrainingError, match="non-finite 3 steps in a row"):
        train(config, tmp_path / "run")
    assert caplog.text.count("step skipped") == 3
    path, state = checkpoint.latest_good(tmp_path / "run" / "checkpoints")
    assert state["state"]["step"] == 2  # skipped steps did not move the model
    assert all(torch.isfinite(t).all() for t in state["model"].values())
