"""Token ids on disk: per split and side, one flat array of ids and one of offsets, memory-mapped.

fairseq's memory-mapped indexed datasets in numpy. A process holds only the pages it reads, and
every rank on a machine shares one copy of the corpus through the operating system's page cache,
so a corpus of millions of pairs costs a training process almost no memory.
"""
from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds every id: uint16 up to 65,536 symbols."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


class Sentences:
    """Read-only sequence of id arrays: `sentences[i]` is sentence i's ids, `lengths` all their lengths."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray):
        self.ids, self.offsets = ids, offsets  # (total ids,), (sentences + 1,)
        # (sentences,): read once and kept in memory, in the smallest type that holds every length + 1
        # (</s>): uint8 up to 254 tokens. A chunk at a time: on tens of millions of sentences the
        # difference of all the offsets at once is hundreds of MB that the allocator would keep.
        n = len(offsets) - 1
        chunks = [(a, min(a + (1 << 20), n)) for a in range(0, n, 1 << 20)]
        longest = max((int(np.diff(offsets[a : b + 1]).max()) for a, b in chunks), default=0)
        self.lengths = np.empty(n, np.min_scalar_type(longest + 1))
        for a, b in chunks:
            np.subtract(offsets[a + 1 : b + 1], offsets[a:b], out=self.lengths[a:b], casting="unsafe")

    @classmethod
    def open(cls, prefix: Path, dtype: np.dtype) -> Sentences:
        offsets = np.load(f"{prefix}.idx.npy", mmap_mode="r")
        ids = np.memmap(f"{prefix}.bin", dtype=dtype, mode="r") if offsets[-1] else np.zeros(0, dtype)
        if len(ids) != offsets[-1]:
            raise ValueError(f"{prefix}.bin holds {len(ids)} ids, its offsets say {offsets[-1]}")
        return cls(ids, offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


class SentenceWriter:
    """Appends sentences chunk by chunk to `prefix.bin`; `close` writes the offsets `prefix.idx.npy`."""

    def __init__(self, prefix: Path, dtype: np.dtype):
        self.prefix, self.dtype = prefix, dtype
        self.file = open(f"{prefix}.bin", "wb")
        # every sentence's length until `close`: in the smallest type that holds a chunk's (one byte a
        # sentence below 256 tokens), since on tens of millions of sentences 64-bit ones take GBs
        self.lengths: list[np.ndarray] = []

    def add(self, sentences: list[list[int]]) -> None:
        lengths = np.fromiter(map(len, sentences), np.int64, len(sentences))
        flat = np.fromiter(chain.from_iterable(sentences), self.dtype, int(lengths.sum()))
        self.file.write(flat.tobytes())
        self.lengths.append(lengths.astype(np.min_scalar_type(int(lengths.max(initial=0)))))

    def close(self) -> None:
        self.file.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.uint8)
        self.lengths = []
        # in the smallest type that holds them (uint32 up to 4G ids): every rank maps all of them
        offsets = np.zeros(len(lengths) + 1, np.min_scalar_type(int(lengths.sum())))  # numpy sums into 64 bits
        np.cumsum(lengths, dtype=offsets.dtype, out=offsets[1:])
        np.save(f"{self.prefix}.idx.npy", offsets)
