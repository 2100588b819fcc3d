"""Parallel text in, token ids out: any aligned corpus through HF `datasets`, Multi30k by default.

Sources, tried in this order:
  1. `data.path` (`make train DATA=...`): a folder holding `{split}.{lang}[.gz]` files (one sentence
     a line, aligned by line), or `{split}.jsonl` / `{split}.tsv` with one field or column per
     language;
  2. the folders in `data.local_dirs` (data/multi30k, ../shared/data/multi30k);
  3. the hub dataset `data.hub_id` (bentrevett/multi30k), checked for reachability in 3 seconds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from . import checkpoint
from .config import Config, DataConfig, to_plain
from .errors import UserError
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

HUB_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "test_2016_flickr": "test"}
CACHE_VERSION = 2


class DataError(UserError):
    """The corpus cannot be found or read; the message names the paths and the fix."""


@dataclass
class ParallelText:
    """One split: raw sentences and, once encoded, their subword ids (no bos / eos)."""

    src_text: list[str]
    tgt_text: list[str]
    src: list[list[int]] | None = None
    tgt: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.src_text)


# ---------------------------------------------------------------------------- finding the corpus

TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".tsv": "tsv", ".tsv.gz": "tsv"}  # one file, both sides


def _local_layout(folder: Path, split: str, cfg: DataConfig):
    """The files of `split` in `folder`, as (format, files), or None when the split is not there."""
    per_lang = {}
    for lang in (cfg.src_lang, cfg.tgt_lang):
        for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
            if (folder / name).is_file():
                per_lang[lang] = folder / name
    if len(per_lang) == 2:
        return "text", per_lang
    for suffix, kind in TABLE_SUFFIXES.items():
        if (folder / f"{split}{suffix}").is_file():
            return kind, {"both": folder / f"{split}{suffix}"}
    return None


def _local_splits(folder: Path, cfg: DataConfig) -> list[str]:
    """Names of the splits `folder` holds for this language pair, for error messages."""
    suffixes = [f".{cfg.src_lang}", f".{cfg.src_lang}.gz", *TABLE_SUFFIXES]
    names = {path.name.removesuffix(suffix) for path in folder.iterdir() for suffix in suffixes
             if path.name.endswith(suffix)}
    return sorted(name for name in names if _local_layout(folder, name, cfg) is not None)


def find_corpus(cfg: DataConfig) -> str | Path:
    """A local folder holding the training split, or the hub id; DataError when neither is usable."""
    if cfg.path:
        folder = Path(cfg.path).expanduser()
        if not folder.is_dir():
            raise DataError(f"data folder {folder} does not exist; point DATA= (data.path) at a folder with "
                            f"{cfg.train_split}.{cfg.src_lang}[.gz] and {cfg.train_split}.{cfg.tgt_lang}[.gz]")
        if _local_layout(folder, cfg.train_split, cfg) is None:
            raise DataError(f"data folder {folder} has no {cfg.train_split} split for {cfg.src_lang}-{cfg.tgt_lang}: "
                            f"expected {cfg.train_split}.{cfg.src_lang}[.gz] + {cfg.train_split}.{cfg.tgt_lang}[.gz], "
                            f"{cfg.train_split}.jsonl or {cfg.train_split}.tsv")
        return folder
    tried = []
    for candidate in cfg.local_dirs:
        folder = Path(candidate).expanduser()
        tried.append(str(folder.resolve()))
        if folder.is_dir() and _local_layout(folder, cfg.train_split, cfg) is not None:
            return folder
    if cfg.hub_id and hub_reachable():
        return cfg.hub_id
    if cfg.hub_id and _hub_cached(cfg.hub_id):
        return cfg.hub_id
    raise DataError(
        f"no corpus found: tried local folders {', '.join(tried) or '(none)'}"
        + (f" and the hub dataset {cfg.hub_id} (hub unreachable, not in the local cache)" if cfg.hub_id else "")
        + ". Fix: make train DATA=/path/to/multi30k (a folder of train.de.gz, train.en.gz, ...)"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can the hub be reached? Bounded to `timeout` seconds (DNS included), so offline runs fail fast."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    result = []

    def probe():
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def _go_offline() -> None:
    """Make `datasets` use only its local cache (the variable is read at import; set the flags too)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def _hub_cached(hub_id: str) -> bool:
    cache = Path(os.environ.get("HF_DATASETS_CACHE", Path.home() / ".cache" / "huggingface" / "datasets"))
    return (cache / hub_id.replace("/", "___")).is_dir()


# ---------------------------------------------------------------------------- reading a split

def read_split(cfg: DataConfig, split: str, corpus: str | Path | None = None) -> ParallelText:
    """Raw sentence pairs of one split, empty pairs dropped (with a count in the log)."""
    corpus = find_corpus(cfg) if corpus is None else corpus
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if isinstance(corpus, Path):
        src, tgt = _read_local(corpus, split, cfg)
    else:
        src, tgt = _read_hub(corpus, split, cfg)
    keep = [i for i, (s, t) in enumerate(zip(src, tgt, strict=True)) if s.strip() and t.strip()]
    if not keep:
        raise DataError(f"the {split} split of {corpus} holds no pair with text on both sides")
    if len(keep) < len(src):
        log.info(f"{split}: dropped {len(src) - len(keep)} pairs with an empty side")
        src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
    return ParallelText(src, tgt)


def _read_local(folder: Path, split: str, cfg: DataConfig) -> tuple[list[str], list[str]]:
    layout = _local_layout(folder, split, cfg)
    if layout is None:
        raise DataError(f"split '{split}' not found in {folder} for {cfg.src_lang}-{cfg.tgt_lang}; the splits "
                        f"there are: {', '.join(_local_splits(folder, cfg)) or '(none)'}")
    kind, files = layout
    if kind == "text":
        lines = {}
        for lang, path in files.items():
            table = _load(path, "text", keep_linebreaks=False)
            lines[lang] = [line.rstrip("\r") for line in table["text"]]
        src, tgt = lines[cfg.src_lang], lines[cfg.tgt_lang]
        if len(src) != len(tgt):
            raise DataError(f"misaligned corpus: {files[cfg.src_lang]} has {len(src)} lines but "
                            f"{files[cfg.tgt_lang]} has {len(tgt)}; the two sides must match line by line")
        return src, tgt
    path = files["both"]
    if kind == "json":
        table = _load(path, "json")
    else:
        table = _load(path, "csv", delimiter="\t", quoting=3, keep_default_na=False)
    missing = [lang for lang in (cfg.src_lang, cfg.tgt_lang) if lang not in table.column_names]
    if missing:
        raise DataError(f"{path} has fields {table.column_names} but not {missing}; "
                        f"name one field (jsonl) or header column (tsv) after each language code")
    return [str(s or "") for s in table[cfg.src_lang]], [str(t or "") for t in table[cfg.tgt_lang]]


def _load(path: Path, builder: str, **options):
    """One local file through an HF `datasets` builder. Invalid UTF-8 is replaced by U+FFFD and
    counted; an empty or unreadable file is a DataError naming it."""
    import datasets

    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; a split needs sentence pairs, one a line")
    try:
        table = datasets.load_dataset(builder, data_files={"file": str(path)}, split="file", encoding_errors="replace",
                                      **options)
    except datasets.exceptions.DatasetGenerationError as error:
        raise DataError(f"cannot read {path}: {error.__cause__ or error}") from None
    if builder == "text":
        replaced = sum("\ufffd" in line for line in table["text"])
        if replaced:
            log.warning(f"{path}: invalid UTF-8 replaced by U+FFFD in lines: {replaced}")
    return table


def _read_hub(hub_id: str, split: str, cfg: DataConfig) -> tuple[list[str], list[str]]:
    import datasets

    if not hub_reachable():
        _go_offline()
    try:
        splits = datasets.load_dataset(hub_id)
    except Exception as error:  # network, auth or format: all end the same way for the user
        raise DataError(f"could not load hub dataset {hub_id}: {error}. "
                        f"Fix: make train DATA=/path/to/local/corpus") from None
    name = split if split in splits else HUB_SPLIT_ALIASES.get(split, split)
    if name not in splits:
        raise DataError(f"hub dataset {hub_id} has splits {list(splits)}, not '{split}'")
    table = splits[name]
    missing = [lang for lang in (cfg.src_lang, cfg.tgt_lang) if lang not in table.column_names]
    if missing:
        raise DataError(f"hub dataset {hub_id} has fields {table.column_names}, not {missing}")
    return list(table[cfg.src_lang]), list(table[cfg.tgt_lang])


# ---------------------------------------------------------------------------- tokenize and cache

@dataclass
class Prepared:
    tokenizer: Tokenizer
    train: ParallelText
    valid: ParallelText


def _fingerprint(config: Config, corpus: str | Path) -> str:
    """Identifies the prepared data: corpus files (name, size, mtime), data and tokenizer settings."""
    import tokenizers

    if isinstance(corpus, Path):
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in corpus.iterdir() if p.is_file())
        where = [str(corpus.resolve()), files]
    else:
        where = [corpus]
    data = {k: v for k, v in to_plain(config.data.__dict__).items() if k not in ("path", "local_dirs", "test_split")}
    key = [CACHE_VERSION, tokenizers.__version__, where, data, to_plain(config.tokenizer.__dict__)]
    return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRANSFORMER_CACHE", "runs/.cache"))


def prepare(config: Config, cache_dir: str | Path | None = None) -> Prepared:
    """Load train and validation splits, train (or reuse) the joint BPE, encode, filter long pairs."""
    start = time.perf_counter()
    corpus = find_corpus(config.data)
    cache = Path(cache_dir or default_cache_dir()) / f"data-{_fingerprint(config, corpus)}.pt"
    if cache.is_file():
        try:
            prepared = _load_prepared(cache)
            log.info(f"data: {len(prepared.train):,} train / {len(prepared.valid):,} valid pairs from cache {cache} "
                     f"({time.perf_counter() - start:.1f}s)")
            return prepared
        except Exception as error:  # a damaged cache is rebuilt, never trusted
            log.warning(f"data cache {cache} unreadable ({error}); rebuilding it")
    cfg = config.data
    log.info(f"data: {corpus} ({cfg.src_lang} -> {cfg.tgt_lang})")
    train, valid = read_split(cfg, cfg.train_split, corpus), read_split(cfg, cfg.valid_split, corpus)
    tok = config.tokenizer
    tokenizer = Tokenizer.train(bpe_sentences(train, tok.train_sentences), tok.vocab_size, tok.min_frequency,
                                tok.lowercase)
    for split in (train, valid):
        split.src, split.tgt = tokenizer.encode_batch(split.src_text), tokenizer.encode_batch(split.tgt_text)
    # Over-long training pairs are dropped.
    keep = [i for i in range(len(train)) if len(train.src[i]) < cfg.max_len and len(train.tgt[i]) < cfg.max_len]
    if len(keep) < len(train):
        log.info(f"train: dropped {len(train) - len(keep)} pairs longer than data.max_len={cfg.max_len} tokens")
        columns = (train.src_text, train.tgt_text, train.src, train.tgt)
        train = ParallelText(*([column[i] for i in keep] for column in columns))
    # Validation keeps every pair (its BLEU must be complete); over-long sources are cut to fit.
    cut = [i for i, seq in enumerate(valid.src) if len(seq) >= cfg.max_len]
    for i in cut:
        valid.src[i], valid.tgt[i] = valid.src[i][: cfg.max_len - 1], valid.tgt[i][: cfg.max_len - 1]
    if cut:
        log.info(f"valid: cut {len(cut)} pairs to data.max_len={cfg.max_len} tokens for loss and decoding")
    prepared = Prepared(tokenizer, train, valid)
    _save_prepared(prepared, cache)
    log.info(f"data: {len(train):,} train / {len(valid):,} valid pairs, vocabulary {tokenizer.vocab_size:,} "
             f"({time.perf_counter() - start:.1f}s)")
    return prepared


def bpe_sentences(split: ParallelText, limit: int) -> Iterator[str]:
    """The sentences the joint BPE learns from: both sides of at most `limit` pairs (0: all), evenly
    spaced through the split, so a large corpus need not pass through the trainer whole."""
    every = max(1, -(-len(split) // limit)) if limit else 1
    yield from split.src_text[::every]
    yield from split.tgt_text[::every]


def _pack(ids: list[list[int]]) -> dict:
    return {"flat": torch.tensor([i for seq in ids for i in seq], dtype=torch.int32),
            "lengths": torch.tensor([len(seq) for seq in ids], dtype=torch.int32)}


def _unpack(packed: dict) -> list[list[int]]:
    return [chunk.tolist() for chunk in packed["flat"].split(packed["lengths"].tolist())]


def _save_prepared(prepared: Prepared, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"tokenizer": prepared.tokenizer.to_str()}
    for name in ("train", "valid"):
        split = getattr(prepared, name)
        state[name] = {"src_text": split.src_text, "tgt_text": split.tgt_text,
                       "src": _pack(split.src), "tgt": _pack(split.tgt)}
    checkpoint.write_atomically(state, path)  # runs started together may write the same cache


def _load_prepared(path: Path) -> Prepared:
    state = torch.load(path, weights_only=True)
    splits = [ParallelText(s["src_text"], s["tgt_text"], _unpack(s["src"]), _unpack(s["tgt"]))
              for s in (state["train"], state["valid"])]
    return Prepared(Tokenizer.from_str(state["tokenizer"]), *splits)
