import json
import logging
from pathlib import Path

import pytest
import torch

from transformer.config import ModelConfig, load_config
from transformer.model import Transformer

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"


@pytest.fixture(scope="session")
def multi30k() -> Path:
    if not (MULTI30K / "train.de.gz").is_file():
        pytest.skip(f"Multi30k not found at {MULTI30K}")
    return MULTI30K


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO)


def write_corpus(folder: Path, pairs: dict[str, list[tuple[str, str]]], src="de", tgt="en") -> Path:
    """Write a tiny aligned corpus {split}.{lang} into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in pairs.items():
        (folder / f"{split}.{src}").write_text("".join(s + "\n" for s, _ in rows))
        (folder / f"{split}.{tgt}").write_text("".join(t + "\n" for _, t in rows))
    return folder


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, multi30k) -> Path:
    """The first 600 training and 60 validation pairs of Multi30k, as plain files in a temp folder."""
    import gzip

    folder = tmp_path_factory.mktemp("small_corpus")
    for split, n in (("train", 600), ("val", 60), ("test_2016_flickr", 40)):
        for lang in ("de", "en"):
            with gzip.open(multi30k / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(n)]
            (folder / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    return folder


def small_model(vocab_size: int = 50, **overrides) -> Transformer:
    """A seeded 2+2-layer model, d_model 32, in eval mode."""
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, n_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2, **overrides)
    return Transformer(config, vocab_size).eval()


def tiny_overrides(corpus, *overrides) -> list[str]:
    """For configs/tiny.yaml on `corpus`: log every step, no validation BLEU, no length penalty sweep."""
    return [f"data.path={corpus}", "train.log_every=1", "train.valid_bleu=false", "train.max_tokens=3000",
            "train.valid_every=1000", "decode.tune_length_penalties=", *overrides]


def tiny_config(corpus, *overrides):
    """configs/tiny.yaml with `tiny_overrides`."""
    return load_config("configs/tiny.yaml", tiny_overrides(corpus, *overrides))


def logged_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
