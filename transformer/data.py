"""Parallel text in, token ids out: any aligned corpus through HF `datasets`, Multi30k by default.

Sources, tried in this order:
  1. `data.path` (`make train DATA=...`): a folder holding `{split}.{lang}[.gz]` files (one sentence
     a line, aligned by line), or `{split}.jsonl` / `{split}.tsv` with one field or column per
     language;
  2. the folders in `data.local_dirs` (data/multi30k, ../shared/data/multi30k);
  3. the hub dataset `data.hub_id` (bentrevett/multi30k), checked for reachability in 3 seconds.

Splits are read as Arrow tables in chunks, never whole. `prepare` trains the joint BPE, encodes the
training split into memory-mapped id arrays (indexed.py) in a cache folder, and maps them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from tqdm import tqdm

from .config import Config, DataConfig, to_plain
from .errors import UserError, disk_full
from .indexed import Sentences, SentenceWriter, id_dtype
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)

HUB_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "test_2016_flickr": "test"}
CACHE_VERSION = 3


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
            problem = "is a file, not a folder" if folder.exists() else "does not exist"
            raise DataError(f"data folder {folder} {problem}; point DATA= (data.path) at a folder with "
                            f"{_split_files(cfg, cfg.train_split)}")
        if _local_layout(folder, cfg.train_split, cfg) is None:
            raise DataError(f"data folder {folder} has no {cfg.train_split} split for {cfg.src_lang}-{cfg.tgt_lang}: "
                            f"expected {_split_files(cfg, cfg.train_split)}, {cfg.train_split}.jsonl or "
                            f"{cfg.train_split}.tsv")
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
        + f". Fix: make train DATA=/path/to/corpus, a folder of {_split_files(cfg, cfg.train_split)}, the same for "
        f"{cfg.valid_split} and {cfg.test_split}"
    )


def _split_files(cfg: DataConfig, split: str) -> str:
    return f"{split}.{cfg.src_lang}[.gz] and {split}.{cfg.tgt_lang}[.gz]"


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

def split_table(cfg: DataConfig, split: str, corpus: str | Path | None = None):
    """One split as a `datasets.Dataset` with columns `src` and `tgt`: Arrow, memory-mapped from the
    HF datasets cache, so a split of millions of pairs is read in chunks and never held whole."""
    corpus = find_corpus(cfg) if corpus is None else corpus
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    table = _local_table(corpus, split, cfg) if isinstance(corpus, Path) else _hub_table(corpus, split, cfg)
    if len(table) == 0:
        raise DataError(f"the {split} split of {corpus} is empty; a split needs sentence pairs")
    return table


def read_split(cfg: DataConfig, split: str, corpus: str | Path | None = None) -> ParallelText:
    """Raw sentence pairs of a small split as lists, empty pairs dropped (with a count in the log)."""
    corpus = find_corpus(cfg) if corpus is None else corpus
    src, tgt, dropped = [], [], 0
    for src_chunk, tgt_chunk, empty in pair_chunks(split_table(cfg, split, corpus)):
        src += src_chunk
        tgt += tgt_chunk
        dropped += empty
    if not src:
        raise DataError(f"the {split} split of {corpus} holds no pair with text on both sides")
    if dropped:
        log.info(f"{split}: dropped {_pairs(dropped)} with an empty side")
    return ParallelText(src, tgt)


def pair_chunks(table, size: int = 50_000) -> Iterator[tuple[list[str], list[str], int]]:
    """(sources, targets, pairs dropped) of `size` consecutive rows at a time: a pair with an empty
    side is dropped and counted."""
    clean = lambda column: [str(text or "").rstrip("\r") for text in column]
    for chunk in table.iter(batch_size=size):
        pairs = [(s, t) for s, t in zip(clean(chunk["src"]), clean(chunk["tgt"]), strict=True)
                 if s.strip() and t.strip()]
        src, tgt = (list(side) for side in zip(*pairs, strict=True)) if pairs else ([], [])
        yield src, tgt, len(chunk["src"]) - len(pairs)


def _local_table(folder: Path, split: str, cfg: DataConfig):
    import datasets

    layout = _local_layout(folder, split, cfg)
    if layout is None:
        raise DataError(f"split '{split}' not found in {folder} for {cfg.src_lang}-{cfg.tgt_lang}; the splits "
                        f"there are: {', '.join(_local_splits(folder, cfg)) or '(none)'}")
    kind, files = layout
    if kind == "text":
        src, tgt = (_load(files[lang], "text", keep_linebreaks=False) for lang in (cfg.src_lang, cfg.tgt_lang))
        if len(src) != len(tgt):
            raise DataError(f"misaligned corpus: {files[cfg.src_lang]} has {len(src)} lines but "
                            f"{files[cfg.tgt_lang]} has {len(tgt)}; the two sides must match line by line")
        return datasets.concatenate_datasets([src.rename_column("text", "src"), tgt.rename_column("text", "tgt")],
                                             axis=1)
    path = files["both"]
    if kind == "json":
        table = _load(path, "json")
    else:
        table = _load(path, "csv", delimiter="\t", quoting=3, keep_default_na=False)
    missing = [lang for lang in (cfg.src_lang, cfg.tgt_lang) if lang not in table.column_names]
    if missing:
        raise DataError(f"{path} has fields {table.column_names} but not {missing}; "
                        f"name one field (jsonl) or header column (tsv) after each language code")
    return _pick(table, cfg.src_lang, cfg.tgt_lang)


def _pick(table, src: str, tgt: str):
    """Keep the two language columns, named src and tgt."""
    table = table.select_columns([src, tgt])
    return table.rename_columns({src: "src", tgt: "tgt"}) if (src, tgt) != ("src", "tgt") else table


def _load(path: Path, builder: str, **options):
    """One local file through an HF `datasets` builder. Invalid UTF-8 is replaced by U+FFFD and
    counted; an empty or unreadable file is a DataError naming it."""
    import datasets
    import pyarrow.compute as pc

    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; a split needs sentence pairs, one a line")
    try:
        table = datasets.load_dataset(builder, data_files={"file": str(path)}, split="file", encoding_errors="replace",
                                      **options)
    except datasets.exceptions.DatasetGenerationError as error:
        if disk_full(error.__cause__):  # the Arrow copy that datasets writes into its cache
            raise DataError(f"no space left in the HF datasets cache {datasets.config.HF_DATASETS_CACHE} to read "
                            f"{path}: free some, or set HF_DATASETS_CACHE to a folder on a larger disk") from None
        raise DataError(f"cannot read {path}: {error.__cause__ or error}") from None
    if builder == "text":
        replaced = pc.sum(pc.match_substring(table.data.column("text"), "\ufffd")).as_py()
        if replaced:
            log.warning(f"{path}: invalid UTF-8 replaced by U+FFFD in lines: {replaced}")
    return table


def _hub_table(hub_id: str, split: str, cfg: DataConfig):
    """A hub dataset's split; language fields at the top level (bentrevett/multi30k) or nested in a
    `translation` field (wmt/wmt14)."""
    import datasets

    if not hub_reachable():
        _go_offline()
    try:
        splits = datasets.load_dataset(hub_id, cfg.hub_config or None)
    except Exception as error:  # network, auth or format: all end the same way for the user
        raise DataError(f"could not load hub dataset {hub_id}{f' ({cfg.hub_config})' if cfg.hub_config else ''}: "
                        f"{error}. Fix: make train DATA=/path/to/local/corpus") from None
    name = split if split in splits else HUB_SPLIT_ALIASES.get(split, split)
    if name not in splits:
        raise DataError(f"hub dataset {hub_id} has splits {list(splits)}, not '{split}'")
    table = splits[name]
    nested = "translation" in table.column_names
    table = table.flatten() if nested else table
    src, tgt = (f"translation.{lang}" if nested else lang for lang in (cfg.src_lang, cfg.tgt_lang))
    missing = [field for field in (src, tgt) if field not in table.column_names]
    if missing:
        raise DataError(f"hub dataset {hub_id} has fields {table.column_names}, not {missing}")
    return _pick(table, src, tgt)


# ---------------------------------------------------------------------------- tokenize and cache

@dataclass
class TokenPairs:
    """Training pairs as memory-mapped subword ids, no text: `src[i]` and `tgt[i]` are id arrays,
    `src.lengths` and `tgt.lengths` every pair's lengths (no bos / eos)."""

    src: Sentences
    tgt: Sentences

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class Prepared:
    tokenizer: Tokenizer
    train: TokenPairs
    valid: ParallelText  # small: text and ids in memory


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
    """The run's data, prepared once into a cache folder and memory-mapped from there.

    A folder is built under a temporary name and renamed when complete, so an interrupted
    preparation never leaves a folder a later run trusts; the later run removes its remains.
    """
    start = time.perf_counter()
    corpus = find_corpus(config.data)
    root = Path(cache_dir or default_cache_dir())
    cache = root / f"data-{_fingerprint(config, corpus)}"
    if cache.is_dir():
        try:
            prepared = load_prepared(cache)
            log.info(f"data: {len(prepared.train):,} train / {len(prepared.valid):,} valid pairs from cache {cache} "
                     f"({time.perf_counter() - start:.1f}s)")
            return prepared
        except Exception as error:  # a damaged cache is rebuilt, never trusted
            log.warning(f"data cache {cache} unreadable ({error}); rebuilding it")
            shutil.rmtree(cache, ignore_errors=True)
    _remove_abandoned(root)
    building = root / f"{cache.name}.tmp-{socket.gethostname()}-{os.getpid()}"  # machines may share the folder
    try:
        _build_cache(config, corpus, building)
        try:
            building.rename(cache)
        except OSError:
            if not cache.is_dir():
                raise
            shutil.rmtree(building)  # a run started together finished the same cache first
    except BaseException as error:
        shutil.rmtree(building, ignore_errors=True)
        if disk_full(error):
            raise DataError(f"no space left on the disk of {root} to prepare the data: free some, or set "
                            f"TRANSFORMER_CACHE to a folder on a larger disk") from None
        raise
    prepared = load_prepared(cache)
    log.info(f"data: {len(prepared.train):,} train / {len(prepared.valid):,} valid pairs, vocabulary "
             f"{prepared.tokenizer.vocab_size:,} ({time.perf_counter() - start:.1f}s)")
    return prepared


def _remove_abandoned(root: Path) -> None:
    """Half-built cache folders of this machine's processes that no longer run (killed while preparing)."""
    for folder in root.glob(f"data-*.tmp-{socket.gethostname()}-*"):
        pid = folder.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            log.info(f"removing {folder}, left by an interrupted preparation")
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    return True


def _build_cache(config: Config, corpus: str | Path, folder: Path) -> None:
    """Train the joint BPE, encode both splits and write them into `folder`; meta.json comes last."""
    cfg, tok = config.data, config.tokenizer
    log.info(f"data: {corpus} ({cfg.src_lang} -> {cfg.tgt_lang}), preparing {folder.parent}")
    folder.mkdir(parents=True)
    table = split_table(cfg, cfg.train_split, corpus)
    valid = read_split(cfg, cfg.valid_split, corpus)
    log.info(f"{cfg.train_split}: {len(table):,} pairs; learning a {tok.vocab_size:,}-symbol joint BPE from "
             f"{len(bpe_rows(len(table), tok.train_sentences)):,} of them")
    tokenizer = Tokenizer.train(bpe_sentences(table, tok.train_sentences), tok.vocab_size, tok.min_frequency,
                                tok.lowercase)
    dtype = id_dtype(tokenizer.vocab_size)
    pairs = _encode_train(table, tokenizer, cfg, folder, dtype)
    if pairs == 0:
        raise DataError(f"the {cfg.train_split} split of {corpus} holds no pair with text on both sides shorter "
                        f"than data.max_len={cfg.max_len} tokens")
    # Validation keeps every pair (its BLEU must be complete); over-long sources are cut to fit.
    valid.src, valid.tgt = tokenizer.encode_batch(valid.src_text), tokenizer.encode_batch(valid.tgt_text)
    cut = [i for i, seq in enumerate(valid.src) if len(seq) >= cfg.max_len]
    for i in cut:
        valid.src[i], valid.tgt[i] = valid.src[i][: cfg.max_len - 1], valid.tgt[i][: cfg.max_len - 1]
    if cut:
        log.info(f"valid: cut {_pairs(len(cut))} to data.max_len={cfg.max_len} tokens for loss and decoding")
    (folder / "tokenizer.json").write_text(tokenizer.to_str())
    (folder / "valid.json").write_text(json.dumps(dataclasses.asdict(valid)))
    meta = {"version": CACHE_VERSION, "dtype": dtype.name, "train_pairs": pairs, "valid_pairs": len(valid)}
    (folder / "meta.json").write_text(json.dumps(meta))


def _pairs(n: int) -> str:
    return f"{n:,} pair" + ("" if n == 1 else "s")


def _encode_train(table, tokenizer: Tokenizer, cfg: DataConfig, folder: Path, dtype: np.dtype) -> int:
    """Encode the training split chunk by chunk into memory-mappable arrays; pairs with an empty side
    or a side of data.max_len tokens or more are dropped. Returns the pairs kept."""
    src_out, tgt_out = SentenceWriter(folder / "train.src", dtype), SentenceWriter(folder / "train.tgt", dtype)
    kept = empty = long = 0
    with _progress(len(table), "encoding") as progress:
        for src, tgt, dropped in pair_chunks(table):
            progress.update(len(src) + dropped)
            empty += dropped
            src_ids, tgt_ids = tokenizer.encode_batch(src), tokenizer.encode_batch(tgt)
            fit = [i for i, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True))
                   if len(s) < cfg.max_len and len(t) < cfg.max_len]
            long += len(src) - len(fit)
            src_out.add([src_ids[i] for i in fit])
            tgt_out.add([tgt_ids[i] for i in fit])
            kept += len(fit)
    src_out.close()
    tgt_out.close()
    if empty:
        log.info(f"{cfg.train_split}: dropped {_pairs(empty)} with an empty side")
    if long:
        log.info(f"{cfg.train_split}: dropped {_pairs(long)} longer than data.max_len={cfg.max_len} tokens")
    return kept


@contextlib.contextmanager
def _progress(total: int, what: str):
    """A tqdm bar on a terminal; otherwise a log line at every tenth of the way."""
    if sys.stderr.isatty():
        with tqdm(total=total, desc=what, unit=" pairs", unit_scale=True, leave=False) as bar:
            yield bar
        return

    class Lines:
        done, next_report = 0, total / 10

        def update(self, n: int) -> None:
            self.done += n
            if self.done >= self.next_report and self.done < total:
                log.info(f"{what}: {self.done:,} / {total:,} pairs")
                self.next_report += total / 10

    yield Lines()


def load_prepared(folder: Path) -> Prepared:
    meta = json.loads((folder / "meta.json").read_text())
    if meta["version"] != CACHE_VERSION:
        raise ValueError(f"cache format {meta['version']}, expected {CACHE_VERSION}")
    dtype = np.dtype(meta["dtype"])
    train = TokenPairs(Sentences.open(folder / "train.src", dtype), Sentences.open(folder / "train.tgt", dtype))
    valid = ParallelText(**json.loads((folder / "valid.json").read_text()))
    if not len(train.src) == len(train.tgt) == meta["train_pairs"] or len(valid) != meta["valid_pairs"]:
        raise ValueError("pair counts differ from meta.json")
    return Prepared(Tokenizer.from_str((folder / "tokenizer.json").read_text()), train, valid)


def bpe_sentences(table, limit: int) -> Iterator[list[str]]:
    """The sentences the joint BPE learns from, in chunks: the sources, then the targets, of at most
    `limit` pairs (0: all) evenly spaced through the split, pairs with an empty side skipped; so a
    large corpus need not pass through the trainer whole, nor sit in memory."""
    rows = bpe_rows(len(table), limit)
    rows = table if len(rows) == len(table) else table.select(rows)
    for side in (0, 1):
        for chunk in pair_chunks(rows):
            yield chunk[side]


def bpe_rows(pairs: int, limit: int) -> range:
    """At most `limit` (0: all) of `pairs` row numbers, evenly spaced."""
    return range(0, pairs, max(1, -(-pairs // limit)) if limit else 1)
