"""One tiny run through the real commands: make train -> translate -> evaluate -> average."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import ROOT
from transformer import checkpoint

TRAIN_TAGS = ["train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/tokens_per_sec"]
VALID_TAGS = ["valid/loss", "valid/ppl", "valid/bleu"]


def make(*args, stdin=None, env=None, check=True):
    result = subprocess.run(["make", "-s", *args], cwd=ROOT, input=stdin, capture_output=True, env=env, timeout=600)
    if check:
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(multi30k, tmp_path_factory):
    run = tmp_path_factory.mktemp("e2e") / "tiny"
    env = {**os.environ, "TRANSFORMER_CACHE": str(run.parent / "cache")}
    make("train", "CONFIG=configs/tiny.yaml", f"DATA={multi30k}", f"RUN={run}",
         "ARGS=train.max_steps=100 train.valid_every=50 train.save_every=20 train.log_every=10", env=env)
    return run, env


def test_training_writes_checkpoints_and_tensorboard_and_learns(trained):
    run, _ = trained
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert {f"step_{step:07d}.pt" for step in (20, 40, 60, 80, 100)} | {"best.pt"} <= set(names)
    assert (run / "config.yaml").is_file() and (run / "tokenizer.json").is_file()
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert set(TRAIN_TAGS + VALID_TAGS) <= set(tags["scalars"])
    assert {"attention/cross", "attention/encoder_self", "attention/decoder_self"} <= set(tags["images"])
    assert any("valid/samples" in t for t in tags["tensors"])
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses[-1] < losses[0] - 0.5


def test_translate_one_sentence(trained):
    run, env = trained
    source = "Ein Mann fährt Fahrrad."
    out = make("translate", f"RUN={run}", f"SENTENCE={source}", env=env)
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 1
    words = lines[0].split()
    assert len(set(words)) > 2 and lines[0] != source  # a sentence, not one word repeated or the input copied
    assert set(words) - set(source.split())  # with English words that the German one lacks


def script(*args, env=None):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def test_translate_refuses_an_empty_sentence(tmp_path):
    out = script("scripts.translate", "--run-dir", str(tmp_path), "--sentence", "  ")  # before any checkpoint is read
    assert out.returncode == 2 and "--sentence is empty" in out.stderr


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(small_corpus, tmp_path):
    out = script("scripts.train", "--config", "configs/tiny.yaml", "--run-dir", str(tmp_path / "run"),
                 "model.d_modle=64")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "model.d_modle" in out.stderr and "Traceback" not in out.stderr
    planted = ("import runpy, sys\n"
               "from transformer.model import Transformer\n"
               "def forward(self, *args):\n"
               "    raise ValueError('a planted bug')\n"
               "Transformer.forward = forward\n"
               "runpy.run_module('scripts.train', run_name='__main__')\n")
    env = {**os.environ, "TRANSFORMER_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", planted, "--config", "configs/tiny.yaml", "--run-dir",
                          str(tmp_path / "run"), "--data", str(small_corpus)], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 1 and "Traceback" in out.stderr and "ValueError: a planted bug" in out.stderr


def test_a_path_the_filesystem_refuses_is_one_line_naming_it(capsys):
    import errno

    from scripts.cli import run

    def raises(error):
        def main():
            raise error
        return main

    with pytest.raises(SystemExit) as exit:  # what RUN= on a read-only disk meets
        run(raises(OSError(errno.EROFS, "Read-only file system", "/mnt/read-only/run")))
    assert exit.value.code == 2
    assert capsys.readouterr().err == ("error: cannot use /mnt/read-only/run: Read-only file system; fix its "
                                       "permissions or choose another path (RUN=, DATA=, OUT=, TRANSFORMER_CACHE=)\n")
    with pytest.raises(OSError):  # no path named: nothing the user can act on, so the traceback stays
        run(raises(OSError(errno.EACCES, "Permission denied")))


def test_a_user_error_with_nproc_2_is_one_line_before_torchrun_starts(tmp_path):
    out = make("train", "NPROC=2", "CONFIG=configs/tiny.yaml", f"RUN={tmp_path / 'run'}", f"DATA={tmp_path / 'none'}",
               check=False)
    errors = [line for line in out.stderr.decode().splitlines() if not re.match(r"make(\[\d+\])?: ", line)]
    assert out.returncode != 0 and errors == [f"error: data folder {tmp_path / 'none'} does not exist; point DATA= "
                                              "(data.path) at a folder with train.de[.gz] and train.en[.gz]"]


def test_translate_stream_keeps_every_line(trained):
    run, env = trained
    lines = b"Ein Hund.\n\n   \n\xff\xfe\xfa kaputt\n\xf0\x9f\x90\x95 \xe4\xb8\x80\n" + b"Wort " * 2000 + b"\nEnde.\n"
    out = make("translate", f"RUN={run}", stdin=lines, env=env)
    produced = out.stdout.decode().split("\n")
    assert produced[-1] == "" and len(produced) - 1 == 7
    assert produced[1] == "" and produced[2] == ""
    assert b"invalid UTF-8" in out.stderr and b"longer than the model allows" in out.stderr


def test_decode_settings_change_at_translation_time_and_nothing_else_does(trained):
    run, env = trained
    make("evaluate", f"RUN={run}", "SPLIT=val", "ARGS=decode.beam_size=2 decode.length_penalty=1.5", env=env)
    report = json.loads((run / "val.bleu.json").read_text())
    assert (report["beam"], report["length_penalty"], report["sentences"]) == (2, 1.5, 1014)
    out = make("translate", f"RUN={run}", "SENTENCE=Hallo", "ARGS=model.d_model=64", env=env, check=False)
    assert out.returncode != 0 and b"only decode.* settings" in out.stderr and b"Traceback" not in out.stderr


def test_training_chooses_the_length_penalty_on_val_and_translation_uses_it(trained):
    run, env = trained
    tuned = checkpoint.load(run / "checkpoints" / "best.pt")["decode"]
    assert tuned["split"] == "val" and [row["length_penalty"] for row in tuned["table"]] == [0.6, 1.0, 1.4, 2.0, 3.0]
    best = max(tuned["table"], key=lambda row: row["bleu"])
    assert tuned["settings"] == {"length_penalty": best["length_penalty"], "beam_size": 4}
    make("evaluate", f"RUN={run}", "CKPT=" + str(run / "checkpoints" / "best.pt"), "SPLIT=val", env=env)
    report = json.loads((run / "val.bleu.json").read_text())
    assert report["length_penalty"] == best["length_penalty"] and report["length_penalty_chosen_on"] == "val"
    assert report["bleu"]["score"] == best["bleu"]  # the sweep's re-ranking is the search with that alpha
    step = run / "checkpoints" / "step_0000060.pt"
    out = make("tune-decode", f"CKPT={step}", "ARGS=decode.tune_length_penalties=0.6,2", env=env)
    assert b"<- chosen" in out.stderr and len(checkpoint.load(step)["decode"]["table"]) == 2


def test_n_best_sampling_and_ensembles_through_make_translate(trained):
    run, env = trained
    best, step = run / "checkpoints" / "best.pt", run / "checkpoints" / "step_0000060.pt"
    sentence = "SENTENCE=Zwei Hunde spielen im Schnee."
    translate = lambda *args: make("translate", f"RUN={run}", sentence, *args, env=env).stdout.decode().splitlines()
    one = translate(f"CKPT={best}")
    lines = translate(f"CKPT={best}", "ARGS=decode.n_best=4")
    assert len(lines) == 4 and all(line.startswith("0 ||| ") for line in lines)
    texts, scores = [line.split(" ||| ")[1] for line in lines], [float(line.split(" ||| ")[2]) for line in lines]
    assert texts[0] == one[0] and scores == sorted(scores, reverse=True)
    greedy = translate(f"CKPT={best}", "ARGS=decode.beam_size=1")
    assert translate(f"CKPT={best}", "ARGS=decode.sampling=true decode.temperature=0") == greedy
    sampled = translate(f"CKPT={best}", "ARGS=decode.sampling=true decode.n_best=5 decode.seed=7")
    assert sampled == translate(f"CKPT={best}", "ARGS=decode.sampling=true decode.n_best=5 decode.seed=7")
    assert len(sampled) == 5 and len({line.split(" ||| ")[1] for line in sampled}) > 1
    scored = lambda ckpt: translate(f"CKPT={ckpt}", "ARGS=decode.scores=true")[0].split(" ||| ")[2]
    assert scored(f"{best} {step}") not in (scored(best), scored(step))  # an ensemble of two: its own scores
    foreign = run.parent / "foreign.pt"
    state = checkpoint.load(step)
    checkpoint.save({**state, "tokenizer": state["tokenizer"].replace("Hund", "Katze")}, foreign)
    out = make("translate", f"CKPT={best} {foreign}", sentence, env=env, check=False)
    assert out.returncode == 2 and b"different vocabularies" in out.stderr and b"Traceback" not in out.stderr


def test_the_ctranslate2_export_decodes_as_the_project_does(trained, multi30k):
    pytest.importorskip("ctranslate2")
    from transformer.data import read_split
    from transformer.export import CT2Translator
    from transformer.translation import Translator

    run, env = trained
    best = run / "checkpoints" / "best.pt"
    make("export", f"RUN={run}", f"CKPT={best}", env=env)
    ours = Translator.from_checkpoint(best, "cpu", ["decode.beam_size=1"])
    sources = read_split(ours.config.data, "val").src_text[:300]
    theirs = CT2Translator(run / "ct2", "cpu", ["decode.beam_size=1"])
    same = sum(a == b for a, b in zip(ours.translate(sources), theirs.translate(sources), strict=True))
    assert same >= 0.99 * len(sources)
    lines = make("translate", f"RUN={run}", "ENGINE=ct2", "SENTENCE=Zwei Hunde.", "ARGS=decode.n_best=2 "
                 "decode.precision=int8", env=env).stdout.decode().splitlines()
    assert len(lines) == 2 and lines[0].startswith("0 ||| ")


def test_translate_without_a_checkpoint_says_to_train(tmp_path):
    out = make("translate", f"RUN={tmp_path / 'none'}", "SENTENCE=Hallo", check=False)
    assert out.returncode != 0
    assert b"make train" in out.stderr and b"Traceback" not in out.stderr


def test_translate_refuses_a_foreign_file(tmp_path):
    foreign = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    out = make("translate", f"CKPT={foreign}", "SENTENCE=Hallo", check=False)
    assert out.returncode != 0 and b"not a checkpoint of this project" in out.stderr


def test_evaluate_and_average(trained, multi30k):
    run, env = trained
    make("evaluate", f"RUN={run}", env=env)
    report = json.loads((run / "test_2016_flickr.bleu.json").read_text())
    assert report["sentences"] == 1000 and "tok:13a" in report["bleu"]["signature"]
    hyps = (run / "hyps" / "test_2016_flickr.en.txt").read_text(encoding="utf-8").split("\n")
    assert len(hyps) == 1001 and not any("Ġ" in h for h in hyps)  # detokenized text
    make("average", f"RUN={run}", env=env)
    averaged = checkpoint.load(run / "checkpoints" / "avg.pt")
    assert averaged["averaged"] == [f"step_{step:07d}.pt" for step in (20, 40, 60, 80, 100)]
    assert averaged["decode"]["split"] == "val" and len(averaged["decode"]["table"]) == 5  # tuned for itself
    out = make("translate", f"RUN={run}", "SENTENCE=Zwei Hunde.", env=env)  # avg.pt is now the default
    assert len(out.stdout.decode().splitlines()) == 1


def test_distill_writes_an_aligned_corpus_and_resumes_exactly(trained, small_corpus, tmp_path):
    run, env = trained
    out = tmp_path / "distilled"
    make("distill", f"RUN={run}", f"DATA={small_corpus}", f"OUT={out}", "ARGS=--chunk 200", env=env)
    sources = (small_corpus / "train.de").read_text(encoding="utf-8").splitlines()
    assert (out / "train.de").read_text(encoding="utf-8").splitlines() == sources
    targets = (out / "train.en").read_text(encoding="utf-8").split("\n")
    assert targets[-1] == "" and len(targets) - 1 == len(sources)
    for split in ("val", "test_2016_flickr"):  # kept as they are: the student is scored on real references
        for lang in ("de", "en"):
            assert (out / f"{split}.{lang}").read_text() == (small_corpus / f"{split}.{lang}").read_text()
    first = make("translate", f"RUN={run}", stdin="\n".join(sources[:200]).encode(), env=env)  # the first chunk
    assert first.stdout.decode().split("\n")[:200] == targets[:200]  # the teacher's translations, as translate gives
    # Stopped after two chunks, halfway through writing a line: resuming gives the same file.
    (out / "train.en").unlink()
    (out / ".train.en.partial").write_text("\n".join(targets[:400]) + "\n" + targets[400][:3], encoding="utf-8")
    resumed = make("distill", f"RUN={run}", f"DATA={small_corpus}", f"OUT={out}", "ARGS=--chunk 200", env=env)
    assert b"resuming at line 401" in resumed.stderr
    assert (out / "train.en").read_text(encoding="utf-8").split("\n") == targets
    assert not (out / ".train.en.partial").exists()
    both = tmp_path / "with_references"  # the original pairs, then the distilled ones
    make("distill", f"RUN={run}", f"DATA={small_corpus}", f"OUT={both}", "ARGS=--with-references", env=env)
    assert (both / "train.de").read_text(encoding="utf-8").splitlines() == sources * 2
    references = (small_corpus / "train.en").read_text(encoding="utf-8").splitlines()
    assert (both / "train.en").read_text(encoding="utf-8").split("\n") == references + targets
    before = {p.name: p.read_bytes() for p in small_corpus.iterdir()}
    refused = make("distill", f"RUN={run}", f"DATA={small_corpus}", f"OUT={small_corpus}", env=env, check=False)
    assert refused.returncode != 0 and b"would be overwritten" in refused.stderr and b"Traceback" not in refused.stderr
    assert {p.name: p.read_bytes() for p in small_corpus.iterdir()} == before


def test_trace_shows_every_stage_of_the_real_model(trained, multi30k, tmp_path):
    run, env = trained
    sentence = "Ein Mann fährt Fahrrad."
    lines = make("trace", f"RUN={run}", f"SENTENCE={sentence}", env=env).stdout.decode().splitlines()
    config = checkpoint.load(run / "checkpoints" / "best.pt")["config"]["model"]
    softmaxes = [line for line in lines if line.strip().startswith("softmax")]
    assert len(softmaxes) == config["encoder_layers"] + 2 * config["decoder_layers"]
    assert any("(B, H, T, S)" in line for line in softmaxes)  # the decoder's queries over the source
    assert "(B, T, V)" in next(line for line in lines if line.startswith("logits"))
    tokens = lambda line: re.search(r"\(1, \d+\)\s+(.*)$", line).group(1).split()
    fed = tokens(next(line for line in lines if "target tokens" in line))  # <s> + the greedy translation
    assert tokens(lines[-1])[:-1] == fed[1:]  # each position's argmax is the next token greedy decoding chose
    untrained = make("trace", f"RUN={tmp_path / 'none'}", "CONFIG=configs/tiny.yaml", f"SENTENCE={sentence}",
                     f"ARGS=data.path={multi30k} model.d_k=8", env=env).stdout.decode()
    assert "untrained" in untrained and "dk=8" in untrained


def test_the_attention_picture_has_the_tokens_on_its_axes(trained, tmp_path):
    from transformer.pictures import attention_pictures
    from transformer.translation import Translator

    run, env = trained
    picture = tmp_path / "attention.png"
    make("translate", f"RUN={run}", "SENTENCE=Ein Mann fährt Fahrrad.", f"ATTENTION={picture}", env=env)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    translator = Translator.from_checkpoint(run / "checkpoints" / "best.pt", "cpu")
    src, tgt = translator.encode(["Ein Mann fährt Fahrrad."])[0], translator.encode(["A man rides a bike."])[0]
    figure = attention_pictures(translator.model, translator.tokenizer, src, tgt, heads=True, kinds=("cross",))["cross"]
    config = translator.config.model
    assert len(figure.axes) == config.decoder_layers * (1 + config.n_heads)
    first = figure.axes[0]
    assert [t.get_text() for t in first.get_xticklabels()] == translator.tokenizer.pieces(src + [2])
    assert [t.get_text() for t in first.get_yticklabels()] == translator.tokenizer.pieces(tgt + [2])
    assert "Mann" in [t.get_text() for t in first.get_xticklabels()]  # words, not byte symbols


def test_ablate_trains_scores_and_skips_what_is_finished(small_corpus, tmp_path):
    grid = tmp_path / "lab.yaml"
    text = (f"base: configs/tiny.yaml\nsteps: 10\noverrides: {{data.path: {small_corpus}, "
            f"decode.tune_length_penalties: [0.6, 1.0], decode.max_extra_len: 5}}\nseeds: [1, 2]\n"
            f"variants:\n  anticausal: {{model.decoder_mask: anticausal}}\n")
    grid.write_text(text)
    env = {**os.environ, "TRANSFORMER_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    first = script("scripts.ablate", "--grid", str(grid), "--out", str(out), env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count("new run") == 3
    rows = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0][2:] for row in rows] == ["base", "base_seed2", "anticausal"]
    assert "over 2 seeds" in (out / "results.md").read_text() and (out / "results.png").is_file()
    result = json.loads((out / "anticausal" / "result.json").read_text())
    assert result["changes"] == {"model.decoder_mask": "anticausal"} and len(result["valid_loss_curve"]) == 10
    grid.write_text(text + "  learned: {model.positional: learned}\n")  # a grown grid trains only what is new
    second = script("scripts.ablate", "--grid", str(grid), "--out", str(out), env=env)
    assert second.returncode == 0 and second.stderr.count("new run") == 1
    assert json.loads((out / "anticausal" / "result.json").read_text()) == result
    twin = tmp_path / "twin.yaml"  # another grid with the same base reuses the finished base
    variant = "anticausal: {model.decoder_mask: anticausal}"
    twin.write_text(text.replace("seeds: [1, 2]", "seeds: [1]").replace(variant, "dot: {model.attention_score: dot}"))
    third = script("scripts.ablate", "--grid", str(twin), "--out", str(tmp_path / "twin"), env=env)
    assert third.returncode == 0 and third.stderr.count("new run") == 1 and "reused: base" in \
        (tmp_path / "twin" / "results.md").read_text()
    grid.write_text(text + "  typo: {model.attention_scor: dot}\n")
    bad = script("scripts.ablate", "--grid", str(grid), "--out", str(out), env=env)
    assert bad.returncode == 2 and "variant typo" in bad.stderr and "model.attention_scor" in bad.stderr


def test_paths_with_spaces_pass_through_make(small_corpus, tmp_path):
    import shutil

    data, run = tmp_path / "my corpus", tmp_path / "my run"
    shutil.copytree(small_corpus, data)
    env = {**os.environ, "TRANSFORMER_CACHE": str(tmp_path / "cache")}
    make("train", "CONFIG=configs/tiny.yaml", f"DATA={data}", f"RUN={run}",
         "ARGS=train.max_steps=2 train.valid_bleu=false decode.tune_length_penalties=", env=env)
    assert (run / "checkpoints" / "step_0000002.pt").is_file()
    assert len(make("translate", f"RUN={run}", "SENTENCE=Ein Hund.", env=env).stdout.decode().splitlines()) == 1


def test_bench_measures_the_config_and_corpus_it_is_given(small_corpus, tmp_path):
    env = {**os.environ, "TRANSFORMER_CACHE": str(tmp_path / "cache")}
    report = tmp_path / "bench.json"
    result = make("bench", "CONFIG=configs/tiny.yaml", f"DATA={small_corpus}",
                  f"ARGS=--parts training --steps 2 --json {report}", env=env)
    bench = json.loads(report.read_text())
    assert bench["config"] == "configs/tiny.yaml" and f"data: {small_corpus}" in result.stderr.decode()
    assert "decoding" not in bench and "data_preparation" not in bench
    assert [row["precision"] for row in bench["training"]] == ["float32", "bfloat16"]
    assert all(row["tokens_per_s"] > 0 and "hours_for_max_steps" in row for row in bench["training"])
