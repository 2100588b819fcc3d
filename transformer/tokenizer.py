"""One joint subword vocabulary for both languages (Sec. 5.1), through HF `tokenizers`.

Byte-level BPE: text is split GPT-2 style and mapped to bytes before merges are learned, and the
256 byte symbols are always in the vocabulary. So every string round-trips exactly, including
characters never seen in training (emoji, CJK): they are spelled in bytes instead of becoming
<unk> and vanishing on decode.
"""
from __future__ import annotations

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # fixed ids 0..3


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        if [hf.token_to_id(s) for s in SPECIALS] != [PAD, BOS, EOS, UNK]:
            raise ValueError("tokenizer does not have this project's special ids (<pad> <s> </s> <unk> = 0..3)")
        self.hf = hf

    @classmethod
    def train(cls, texts, vocab_size: int, min_frequency: int = 2, lowercase: bool = False) -> Tokenizer:
        hf = HFTokenizer(models.BPE(unk_token="<unk>"))
        if lowercase:  # part of the saved tokenizer, so whatever it encodes later is lower-cased too
            hf.normalizer = normalizers.Lowercase()
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def from_str(cls, json: str) -> Tokenizer:
        return cls(HFTokenizer.from_str(json))

    def to_str(self) -> str:
        return self.hf.to_str()

    @property
    def lowercase(self) -> bool:
        return isinstance(self.hf.normalizer, normalizers.Lowercase)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def tokens(self) -> list[str]:
        """The vocabulary's symbols, in id order."""
        return [self.hf.id_to_token(i) for i in range(self.vocab_size)]

    def pieces(self, ids) -> list[str]:
        """Each id as the text it stands for, for labels: a piece that goes on a word starts with "·";
        special tokens by name."""
        out, previous = [], PAD
        for i in map(int, ids):
            text = SPECIALS[i] if i <= UNK else self.hf.decode([i])
            out.append("·" + text if i > UNK and previous > UNK and text[:1].isalnum() else text)
            previous = i
        return [text.strip() for text in out]

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once, on every core (the fast variant skips character offsets)."""
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Token ids -> text; stops at the first </s> and drops other special tokens."""
        ids = list(ids)
        if EOS in ids:
            ids = ids[: ids.index(EOS)]
        return self.hf.decode([i for i in ids if i > UNK], skip_special_tokens=False)
