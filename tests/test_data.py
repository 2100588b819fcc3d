"""Corpus loading, the joint BPE vocabulary and token-budget batches."""
import json
import socket
import threading

import numpy as np
import pytest
import torch

from tests.conftest import write_corpus
from transformer import data as data_module
from transformer.batching import _counting_sort, collate, epoch_steps, make_batches, padding_fraction, shard
from transformer.config import ConfigError, load_config
from transformer.data import DataError, prepare, read_split
from transformer.tokenizer import BOS, EOS, PAD, Tokenizer


@pytest.fixture(scope="module")
def prepared(multi30k, cache_dir):
    return prepare(load_config("configs/multi30k.yaml", [f"data.path={multi30k}"]), cache_dir)


def test_multi30k_line_counts(multi30k):
    cfg = load_config("configs/multi30k.yaml", [f"data.path={multi30k}"]).data
    counts = [len(read_split(cfg, split)) for split in ("train", "val", "test_2016_flickr")]
    assert counts == [29000, 1014, 1000]


def test_other_language_pairs_by_config(multi30k):
    cfg = load_config("configs/multi30k.yaml", [f"data.path={multi30k}", "data.src_lang=en", "data.tgt_lang=fr"]).data
    split = read_split(cfg, "val")
    assert split.src_text[0].startswith("A ") and len(split) == 1014


def test_tokenizer_round_trips_validation_and_test_exactly(prepared, multi30k):
    cfg = load_config("configs/multi30k.yaml", [f"data.path={multi30k}"]).data
    tok = prepared.tokenizer
    for split in ("val", "test_2016_flickr"):
        text = read_split(cfg, split)
        for line in text.src_text + text.tgt_text:
            assert tok.decode(tok.encode(line)) == line


def test_unseen_characters_survive(prepared):
    tok = prepared.tokenizer
    for line in ["Ein Hund 🐕 läuft.", "一只狗在跑", "Ω≈ç√∫ ﷽", "tab\tand  double  spaces"]:
        ids = tok.encode(line)
        assert tok.decode(ids) == line
        assert 3 not in ids  # never <unk>


def test_special_ids_are_fixed(prepared):
    tok = prepared.tokenizer
    assert [tok.hf.token_to_id(t) for t in ["<pad>", "<s>", "</s>", "<unk>"]] == [PAD, BOS, EOS, 3]
    assert Tokenizer.from_str(tok.to_str()).encode("Ein Mann.") == tok.encode("Ein Mann.")
    assert tok.decode(tok.encode("Ein Mann.") + [EOS] + tok.encode("Hund")) == "Ein Mann."


def test_lowercase_option_is_part_of_the_saved_tokenizer(multi30k):
    cfg = load_config("configs/multi30k.yaml", [f"data.path={multi30k}"]).data
    val = read_split(cfg, "val")
    tok = Tokenizer.train(val.src_text + val.tgt_text, 1000, lowercase=True)
    saved = Tokenizer.from_str(tok.to_str())  # as a checkpoint carries it to translation
    assert saved.lowercase and not Tokenizer.train(val.src_text, 500).lowercase
    assert saved.encode("Ein Mann im T-Shirt.") == saved.encode("ein mann im t-shirt.")
    assert saved.decode(saved.encode("Ein Mann im T-Shirt.")) == "ein mann im t-shirt."


def test_prepare_is_cached(multi30k, cache_dir, prepared, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached prepare read the corpus or trained a tokenizer")

    monkeypatch.setattr(data_module, "split_table", must_not_run)  # the benchmark times the cache
    monkeypatch.setattr(Tokenizer, "train", must_not_run)
    again = prepare(load_config("configs/multi30k.yaml", [f"data.path={multi30k}"]), cache_dir)
    assert again.tokenizer.to_str() == prepared.tokenizer.to_str()
    assert (again.train.src.ids == prepared.train.src.ids).all() and again.valid.tgt_text == prepared.valid.tgt_text


def test_prepared_ids_are_the_tokenizers_and_no_text_is_kept(prepared, multi30k):
    cfg = load_config("configs/multi30k.yaml", [f"data.path={multi30k}"]).data
    train = read_split(cfg, "train")
    tok = prepared.tokenizer
    assert len(prepared.train) == len(train) == 29000
    assert isinstance(prepared.train.src.ids, np.memmap) and not hasattr(prepared.train, "src_text")
    for i in (0, 1, 14_321, 28_999):
        assert prepared.train.src[i].tolist() == tok.encode(train.src_text[i])
        assert prepared.train.tgt[i].tolist() == tok.encode(train.tgt_text[i])
    assert prepared.train.tgt.lengths[28_999] == len(tok.encode(train.tgt_text[28_999]))


def test_batches_respect_the_token_budget_and_cover_the_data(prepared):
    src, tgt = prepared.train.src.lengths, prepared.train.tgt.lengths
    batches = make_batches(src, tgt, 4096, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(src)))
    real = padded = 0
    for b in batches:
        batch = collate([prepared.train.src[i] for i in b], [prepared.train.tgt[i] for i in b])
        assert batch.src.numel() <= 4096 and batch.tgt_in.numel() <= 4096
        real += batch.src_tokens + batch.tgt_tokens
        padded += batch.src.numel() + batch.tgt_in.numel()
    assert 1 - real / padded <= 0.10
    assert padding_fraction(batches, src, tgt) == pytest.approx(1 - real / padded)


def reference_batches(src_lens, tgt_lens, max_tokens, seed=None):
    """Token-budget batching written plainly, one pair at a time: what make_batches must equal."""
    import random

    order = list(range(len(src_lens)))
    rng = random.Random(seed)
    if seed is not None:
        rng.shuffle(order)
    order.sort(key=lambda i: (src_lens[i], tgt_lens[i]))
    batches, current, longest_src, longest_tgt = [], [], 0, 0
    for i in order:
        s, t = src_lens[i] + 1, tgt_lens[i] + 1
        ls, lt = max(longest_src, s), max(longest_tgt, t)
        if current and (len(current) + 1) * max(ls, lt) > max_tokens:
            batches.append(current)
            current, ls, lt = [], s, t
        current.append(i)
        longest_src, longest_tgt = ls, lt
    batches.append(current)
    if seed is not None:
        rng.shuffle(batches)
    return batches


def test_vectorized_batches_equal_the_plain_algorithm(prepared):
    src, tgt = prepared.train.src.lengths.tolist(), prepared.train.tgt.lengths.tolist()
    g = torch.Generator().manual_seed(0)
    noisy_src = torch.randint(0, 60, (5000,), generator=g).tolist()
    noisy_tgt = torch.randint(0, 90, (5000,), generator=g).tolist()
    long = [70_000, 3, 65_000, 70_000, 5, 1, 40_000, 65_000]  # a line to translate can be this long
    for lengths, budgets in (((src, tgt), (4096, 1000, 130)), ((noisy_src, noisy_tgt), (2000, 91)),
                             ((long, long[::-1]), (200_000, 70_001))):
        for budget in budgets:
            for seed in (None, 1, 7):
                batches = make_batches(*lengths, budget, seed=seed)
                assert [b.tolist() for b in batches] == reference_batches(*lengths, budget, seed)


@pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 20])
def test_the_chunked_counting_sort_equals_a_stable_argsort(chunk):
    g = torch.Generator().manual_seed(chunk)
    for high in (3, 255, 70_000):
        lengths = torch.randint(0, high, (3001,), generator=g).numpy()
        order = torch.randperm(3001, generator=g).numpy().astype(np.int32)
        expected = order[np.argsort(lengths[order], kind="stable")]
        assert np.array_equal(_counting_sort(order, lengths, chunk), expected)


def test_padding_fraction_over_many_batches_equals_counting_each_batch():
    g = torch.Generator().manual_seed(0)
    src, tgt = (torch.randint(1, 80, (30_000,), generator=g).numpy().astype(np.uint8) for _ in range(2))
    batches = np.split(torch.randperm(30_000, generator=g).numpy(), np.arange(2, 30_000, 2))  # 15,000 pairs of pairs
    real = sum(int(src[b].sum() + tgt[b].sum()) + 2 * len(b) for b in batches)
    padded = sum(len(b) * (int(src[b].max()) + int(tgt[b].max()) + 2) for b in batches)
    assert padding_fraction(batches, src, tgt) == pytest.approx(1 - real / padded)


def test_a_pair_over_the_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="max_tokens=10"):
        make_batches([3, 12, 4], [3, 4, 5], 10)


def test_same_seed_same_batches():
    src = [(i * 7) % 23 + 1 for i in range(500)]
    tgt = [(i * 5) % 19 + 1 for i in range(500)]
    def batches(seed):
        return [b.tolist() for b in make_batches(src, tgt, 200, seed=seed)]

    assert batches(1) == batches(1) and batches(1) != batches(2)


def test_target_shift():
    batch = collate([[5, 6], [7]], [[8, 9, 10], [11]])
    assert batch.tgt_in.tolist() == [[BOS, 8, 9, 10], [BOS, 11, PAD, PAD]]
    assert batch.tgt_out.tolist() == [[8, 9, 10, EOS], [11, EOS, PAD, PAD]]
    assert batch.src.tolist() == [[5, 6, EOS], [7, EOS, PAD]]
    assert batch.src_pad.tolist() == [[False, False, False], [False, False, True]]
    assert (batch.src_tokens, batch.tgt_tokens) == (5, 6)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_shards_are_disjoint_cover_the_data_and_have_equal_steps(world):
    src = [(i * 7) % 23 + 1 for i in range(301)]
    batches = shard(make_batches(src, src, 150, seed=0), world)
    shards = [batches[r::world] for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for b in s for i in b]
    assert sorted(seen) == list(range(301))


@pytest.mark.parametrize("world, accumulate", [(2, 1), (3, 2)])
def test_each_rank_holds_its_share_of_each_step_and_the_whole_steps_token_count(world, accumulate):
    src, tgt = [(i * 7) % 23 + 1 for i in range(301)], [(i * 5) % 19 + 1 for i in range(301)]
    ranks = [epoch_steps(src, tgt, 150, 0, world, accumulate, rank) for rank in range(world)]
    assert len({len(steps) for steps in ranks}) == 1
    seen = []
    for shares in zip(*ranks, strict=True):  # one step, as each rank holds it
        assert len({len(share.batches) for share in shares}) == 1 and len(shares[0].batches) <= accumulate
        mine = [i for share in shares for batch in share.batches for i in batch]
        assert {share.tgt_tokens for share in shares} == {sum(tgt[i] + 1 for i in mine)}  # + </s> each
        # copies, not views: a view would keep the whole epoch's indices in every rank
        assert all(batch.base is None for share in shares for batch in share.batches)
        seen += mine
    assert sorted(seen) == list(range(301))


def test_misaligned_corpus_names_both_files(tmp_path):
    folder = write_corpus(tmp_path / "c", {"train": [("a", "b"), ("c", "d")]})
    (folder / "train.en").write_text("only one line\n")
    cfg = load_config(None, [f"data.path={folder}"]).data
    with pytest.raises(DataError) as error:
        read_split(cfg, "train")
    message = str(error.value)
    assert "train.de" in message and "train.en" in message and "2" in message and "1" in message


def test_missing_split_lists_the_splits_there(tmp_path):
    folder = write_corpus(tmp_path / "c", {"train": [("a", "b")], "test_2016.flickr": [("c", "d")]})
    (folder / "val.de").write_text("a source side only\n")
    cfg = load_config(None, [f"data.path={folder}"]).data
    with pytest.raises(DataError) as error:
        read_split(cfg, "test")
    assert str(error.value).endswith("the splits there are: test_2016.flickr, train")


def test_missing_folder_names_it_and_the_fix(tmp_path):
    cfg = load_config(None, [f"data.path={tmp_path / 'nowhere'}"]).data
    with pytest.raises(DataError, match="nowhere does not exist"):
        read_split(cfg, "train")
    (tmp_path / "train.de").write_text("ein Hund\n")
    cfg = load_config(None, [f"data.path={tmp_path / 'train.de'}"]).data
    with pytest.raises(DataError, match="train.de is a file, not a folder; point DATA="):
        read_split(cfg, "train")


def test_no_local_data_and_no_hub_fails_before_any_hub_download(tmp_path, monkeypatch):
    import datasets

    def must_not_run(*args, **kwargs):  # its retries against an unreachable hub take ~24 s
        raise AssertionError("load_dataset was called without a reachable hub")

    monkeypatch.setattr(datasets, "load_dataset", must_not_run)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    cfg = load_config(None, [f"data.local_dirs={tmp_path / 'a'},{tmp_path / 'b'}", "data.src_lang=en",
                             "data.tgt_lang=fr"]).data
    with pytest.raises(DataError) as error:
        read_split(cfg, "train")
    assert str(tmp_path / "a") in str(error.value) and "DATA=" in str(error.value)
    assert "train.en[.gz] and train.fr[.gz]" in str(error.value)  # the config's files, whatever the corpus


def test_hub_probe_gives_up_without_waiting_for_a_hanging_connection(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    release = threading.Event()

    def hang(*args, **kwargs):  # a connection attempt that answers only when the test says so
        release.wait()
        raise OSError("timed out")

    monkeypatch.setattr(data_module.socket, "create_connection", hang)
    try:
        assert not data_module.hub_reachable(timeout=0.2)
        assert not release.is_set()  # it answered while the attempt was still hanging
    finally:
        release.set()


def test_empty_lines_are_dropped_and_counted(tmp_path, caplog):
    folder = write_corpus(tmp_path / "c", {"train": [("a b", "c d"), ("", "x"), ("y", " "), ("e", "f")]})
    split = read_split(load_config(None, [f"data.path={folder}"]).data, "train")
    assert split.src_text == ["a b", "e"] and split.tgt_text == ["c d", "f"]
    assert "dropped 2 pairs" in caplog.text


def test_jsonl_and_tsv_corpora(tmp_path):
    rows = [{"de": "ein Hund", "en": "a dog"}, {"de": "eine Katze", "en": "a cat"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "val.tsv").write_text("en\tde\na dog\tein Hund\n")
    cfg = load_config(None, [f"data.path={tmp_path}"]).data
    assert read_split(cfg, "train").tgt_text == ["a dog", "a cat"]
    val = read_split(cfg, "val")
    assert (val.src_text, val.tgt_text) == (["ein Hund"], ["a dog"])


def test_long_pairs_are_filtered_with_a_count(tmp_path, caplog):
    long = " ".join(["Wort"] * 40)
    folder = write_corpus(tmp_path / "c", {"train": [("kurz", "short")] * 20 + [(long, "long")], "val": [("a", "b")]})
    config = load_config(None, [f"data.path={folder}", "data.max_len=16", "tokenizer.vocab_size=300"])
    prepared = prepare(config, tmp_path / "cache")
    assert len(prepared.train) == 20
    assert "longer than data.max_len=16" in caplog.text


def test_invalid_utf8_is_replaced_and_counted(tmp_path, caplog):
    folder = write_corpus(tmp_path / "c", {"train": [("ein Hund", "a dog"), ("x", "y")]})
    (folder / "train.de").write_bytes(b"ein Hund\n\xff\xfe kaputt\n")
    split = read_split(load_config(None, [f"data.path={folder}"]).data, "train")
    assert split.src_text == ["ein Hund", "\ufffd\ufffd kaputt"] and split.tgt_text == ["a dog", "y"]
    assert "train.de: invalid UTF-8 replaced by U+FFFD in lines: 1" in caplog.text


@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_an_empty_split_names_its_file(tmp_path, content):
    folder = write_corpus(tmp_path / "c", {"train": [("a", "b")]})
    (folder / "train.de").write_bytes(content)
    (folder / "train.en").write_bytes(content)
    with pytest.raises(DataError, match="train"):
        read_split(load_config(None, [f"data.path={folder}"]).data, "train")


def test_the_bpe_learns_from_evenly_spaced_pairs_up_to_its_cap():
    import datasets

    from transformer.data import bpe_sentences

    src, tgt = [f"s{i}" for i in range(10)], [f"t{i}" for i in range(10)]
    table = datasets.Dataset.from_dict({"src": src, "tgt": tgt})
    sentences = lambda limit: [s for chunk in bpe_sentences(table, limit) for s in chunk]
    assert sentences(0) == sentences(10) == src + tgt
    assert sentences(4) == ["s0", "s3", "s6", "s9", "t0", "t3", "t6", "t9"]
    assert sentences(5) == ["s0", "s2", "s4", "s6", "s8", "t0", "t2", "t4", "t6", "t8"]
    table = datasets.Dataset.from_dict({"src": ["a", " ", "c"], "tgt": ["x", "y", ""]})
    assert sentences(0) == ["a", "x"]  # pairs with an empty side are not learned from


def test_an_interrupted_preparation_is_never_trusted(tmp_path, monkeypatch):
    folder = write_corpus(tmp_path / "c", {"train": [("ein Hund", "a dog"), ("eine Katze", "a cat")] * 10,
                                           "val": [("ein Hund", "a dog")]})
    config = load_config(None, [f"data.path={folder}", "tokenizer.vocab_size=300"])
    cache = tmp_path / "cache"

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_module, "_encode_train", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(config, cache)
    assert list(cache.iterdir()) == []  # the half-built folder is gone
    monkeypatch.undo()
    (cache / f"data-0123456789abcdef.tmp-{socket.gethostname()}-999999999").mkdir()  # a kill -9 leaves it
    prepared = prepare(config, cache)
    assert [p.name for p in cache.iterdir()] == [f"data-{data_module._fingerprint(config, folder)}"]
    assert len(prepared.train) == 20
    expected = prepared.train.tgt[3].tolist()
    del prepared  # its memory map of the file damaged next
    (next(cache.iterdir()) / "train.tgt.bin").write_bytes(b"")  # damaged: rebuilt, not trusted
    assert prepare(config, cache).train.tgt[3].tolist() == expected


def test_machines_preparing_one_shared_cache_at_once_keep_one_copy(tmp_path, monkeypatch):
    """Each machine's first rank prepares the data: on a filesystem the machines share, two build the
    same cache at once; one copy is kept, and both train on it."""
    import multiprocessing

    folder = write_corpus(tmp_path / "c", {"train": [("ein Hund", "a dog"), ("eine Katze", "a cat")] * 10,
                                           "val": [("ein Hund", "a dog")]})
    config = load_config(None, [f"data.path={folder}", "tokenizer.vocab_size=300"])
    cache = tmp_path / "cache"
    fork = multiprocessing.get_context("fork")
    building, results = fork.Barrier(2), fork.Queue()
    build = data_module._build_cache

    def build_together(*args):
        building.wait(timeout=60)  # both found no cache
        build(*args)

    def machine():
        try:
            prepared = prepare(config, cache)
            results.put([prepared.train.src[i].tolist() for i in range(len(prepared.train))])
        except Exception as error:  # noqa: BLE001 - reported to the test
            results.put(repr(error))

    monkeypatch.setattr(data_module, "_build_cache", build_together)
    machines = [fork.Process(target=machine, daemon=True) for _ in range(2)]  # a hung one cannot hold up pytest
    for process in machines:
        process.start()
    first, second = (results.get(timeout=120) for _ in machines)
    for process in machines:
        process.join(timeout=30)
    assert first == second and len(first) == 20
    assert [p.name for p in cache.iterdir()] == [f"data-{data_module._fingerprint(config, folder)}"]


def test_a_full_disk_names_the_cache_to_free_or_move(tmp_path, monkeypatch):
    import errno

    import datasets

    folder = write_corpus(tmp_path / "c", {"train": [("ein Hund", "a dog")] * 10, "val": [("ein Hund", "a dog")]})
    config = load_config(None, [f"data.path={folder}", "tokenizer.vocab_size=300"])
    full = OSError(errno.ENOSPC, "No space left on device")

    def encode(*args):
        raise full

    monkeypatch.setattr(data_module, "_encode_train", encode)
    with pytest.raises(DataError, match="no space left on the disk of .*cache.* TRANSFORMER_CACHE"):
        prepare(config, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # the half-built folder is gone
    monkeypatch.undo()

    def load_dataset(*args, **kwargs):  # the Arrow copy that datasets writes of a local file
        raise datasets.exceptions.DatasetGenerationError("An error occurred while generating the dataset") from full

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(DataError, match="no space left in the HF datasets cache .* HF_DATASETS_CACHE"):
        prepare(config, tmp_path / "cache")


def test_sentences_round_trip_through_their_files(tmp_path):
    from transformer.indexed import Sentences, SentenceWriter, id_dtype

    assert id_dtype(8000) == np.uint16 and id_dtype(1 << 16) == np.uint16 and id_dtype(100_000) == np.int32
    for dtype, chunks in ((np.uint16, [[[5, 6, 7], [], [65535]], [[9]]]), (np.int32, [[[70_000, 1]], [[2] * 255]])):
        writer = SentenceWriter(tmp_path / dtype.__name__, np.dtype(dtype))
        for chunk in chunks:
            writer.add(chunk)
        writer.close()
        read = Sentences.open(tmp_path / dtype.__name__, np.dtype(dtype))
        expected = [s for chunk in chunks for s in chunk]
        assert [read[i].tolist() for i in range(len(read))] == expected
        assert (read.lengths + 1).tolist() == [len(s) + 1 for s in expected]  # + </s> does not overflow


def test_sentence_lengths_read_over_many_chunks_equal_the_offsets_differences():
    from transformer.indexed import Sentences

    for longest in (254, 255, 70_000):  # the last length that keeps uint8 with </s>, then wider types
        lengths = torch.randint(0, 100, (2_500_001,), generator=torch.Generator().manual_seed(longest)).numpy()
        lengths[1_234_567] = longest
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint32)
        read = Sentences(np.zeros(int(offsets[-1]), np.uint16), offsets).lengths
        assert np.array_equal(read, lengths) and read.dtype == np.min_scalar_type(longest + 1)


def test_the_wmt14_config_reads_the_hub_layout_of_wmt_wmt14(small_corpus, tmp_path, monkeypatch, cache_dir):
    """configs/wmt14_en_de.yaml against a copy of the hub dataset's layout (parquet files under
    de-en/, listed by the card's `configs`, each pair in a nested `translation` field), served as
    if from the hub: the language pair, direction and splits come out as the config names them."""
    import datasets

    repo = tmp_path / "wmt14"
    card = ["---", "configs:", "- config_name: de-en", "  data_files:"]
    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})
    for split, file in (("train", "train"), ("validation", "val"), ("test", "test_2016_flickr")):
        de, en = ((small_corpus / f"{file}.{lang}").read_text().splitlines() for lang in ("de", "en"))
        rows = {"translation": [{"de": d, "en": e} for d, e in zip(de, en, strict=True)]}
        (repo / "de-en").mkdir(parents=True, exist_ok=True)
        parquet = repo / "de-en" / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_dict(rows, features=features).to_parquet(parquet)
        card += [f"  - split: {split}", f"    path: de-en/{split}-*"]
    (repo / "README.md").write_text("\n".join(card + ["---", ""]))
    monkeypatch.setattr(data_module, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    config = load_config("configs/wmt14_en_de.yaml", [f"data.hub_id={repo}", "data.local_dirs=[]",
                                                      "tokenizer.vocab_size=500"])
    assert data_module.find_corpus(config.data) == str(repo)
    valid = read_split(config.data, config.data.valid_split)
    test = read_split(config.data, config.data.test_split)
    assert valid.src_text == (small_corpus / "val.en").read_text().splitlines()  # en -> de: English is the source
    assert valid.tgt_text == (small_corpus / "val.de").read_text().splitlines()
    assert test.src_text[0] == (small_corpus / "test_2016_flickr.en").read_text().splitlines()[0]
    prepared = prepare(config, cache_dir)
    assert len(prepared.train) == 600 and len(prepared.valid) == 60
    first_german = (small_corpus / "train.de").read_text().splitlines()[0]
    assert prepared.tokenizer.decode(list(prepared.train.tgt[0])) == first_german
