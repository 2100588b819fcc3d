"""Configuration: YAML files -> frozen, typed dataclasses. The only home of defaults.

Defaults are the paper's base model (Table 3). A YAML file gives values for some keys; dotted
overrides (`train.warmup_steps=8000`) come last. Unknown keys, wrong types and bad choices fail
with the key's name; values are coerced by the field's type (PyYAML reads `1e-9` as a string).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .errors import UserError


class ConfigError(UserError):
    """A config file or override that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 512  # D
    n_heads: int = 8  # H; d_k = d_v = D / H
    d_ff: int = 2048  # inner size of the position-wise FFN (Sec. 3.3)
    encoder_layers: int = 6  # N
    decoder_layers: int = 6  # N
    dropout: float = 0.1  # P_drop on sublayer outputs and embedding sums (Sec. 5.4)
    attention_dropout: float = 0.0  # not in the paper; 0 is faithful
    relu_dropout: float = 0.0  # not in the paper; 0 is faithful
    norm: Literal["post", "pre"] = "post"  # post: LayerNorm(x + Sublayer(x)), Sec. 3.1
    layer_norm_eps: float = 1e-6  # not given in the paper
    share_embeddings: bool = True  # one matrix for source, target and pre-softmax (Sec. 3.4)
    max_positions: int = 1024  # rows of the sinusoid table; longer inputs are truncated
    # What-if variants (docs/lab.md); the paper's choice is each default.
    d_k: int = 0  # query and key size of a head; 0: D / H (Table 3 row B makes it smaller, values stay D / H)
    attention_score: Literal["scaled_dot", "dot", "additive", "squared", "reversed"] = "scaled_dot"
    decoder_mask: Literal["causal", "anticausal", "none"] = "causal"  # what a target position sees of the others
    positional: Literal["sinusoid", "learned", "none"] = "sinusoid"  # Table 3 row E: learned


@dataclass(frozen=True)
class DataConfig:
    path: str = ""  # local corpus folder; empty: try `local_dirs`, then the hub
    local_dirs: tuple[str, ...] = ("data/multi30k", "../shared/data/multi30k")
    hub_id: str = "bentrevett/multi30k"
    hub_config: str = ""  # the hub dataset's configuration, e.g. "de-en" for wmt/wmt14
    src_lang: str = "de"
    tgt_lang: str = "en"
    train_split: str = "train"
    valid_split: str = "val"
    test_split: str = "test_2016_flickr"
    max_len: int = 256  # subword tokens per side; longer training pairs are dropped


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 37000  # one joint BPE vocabulary for both languages (Sec. 5.1)
    min_frequency: int = 2
    lowercase: bool = False  # lower-case all text before BPE, as most Multi30k papers train; outputs are lower-case
    train_sentences: int = 1_000_000  # sentence pairs the BPE learns from, evenly spaced; 0 = all


@dataclass(frozen=True)
class TrainConfig:
    max_tokens: int = 25000  # per side and micro-batch: batch size x longest sentence (Sec. 5.1)
    accumulate: int = 1  # micro-batches per optimizer step
    lr_factor: float = 1.0  # lrate = factor * D^-0.5 * min(step^-0.5, step * warmup^-1.5)
    warmup_steps: int = 4000
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-9
    label_smoothing: float = 0.1
    clip_norm: float = 0.0  # 0: no clipping, as in the paper
    max_steps: int = 100000  # the base model's 100k steps (Sec. 5.2); 0 = no limit
    max_epochs: int = 0  # 0 = no limit
    max_minutes: float = 0.0  # wall-clock budget; 0 = no limit
    valid_every: int = 1000  # steps between validations
    valid_bleu: bool = True  # greedy-decode the validation split for BLEU
    early_stopping: int = 0  # stop after this many validations without a better BLEU; 0 = off
    save_every: int = 1000  # steps between checkpoints
    save_every_minutes: float = 10.0  # also saves off the step grid: a resume point, never averaged
    keep_last: int = 5  # checkpoints of the save_every grid kept (and averaged by `make average`)
    average_last: int = 5  # Sec. 6.1: average the last 5 checkpoints
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False
    seed: int = 1
    threads: int = 0  # CPU threads; 0 = all cores
    log_every: int = 50
    max_bad_steps: int = 5  # consecutive non-finite steps before the run stops


@dataclass(frozen=True)
class DecodeConfig:
    beam_size: int = 4  # Sec. 6.1
    length_penalty: float = 0.6  # alpha of GNMT's ((5 + len) / 6)^alpha; a tuned checkpoint carries its own
    max_extra_len: int = 50  # output length <= input length + 50 (Sec. 6.1)
    max_tokens: int = 4000  # source tokens per translation batch
    # float32 as trained; bfloat16 weights and activations; int8: dynamically quantized linear layers
    precision: Literal["float32", "bfloat16", "int8"] = "float32"
    # The length penalties tried on the validation split for each checkpoint training or `make average`
    # writes (`make tune-decode` for any other); the best BLEU is stored in the checkpoint. Empty: none.
    tune_length_penalties: tuple[float, ...] = (0.6, 1.0, 1.4, 2.0, 3.0)
    n_best: int = 1  # candidates per sentence; more than 1 writes `line ||| text ||| score` lines
    scores: bool = False  # write `line ||| text ||| score` for the best candidate too
    sampling: bool = False  # draw each token from the model instead of searching (beam_size is not used)
    temperature: float = 1.0  # sampling: < 1 sharpens the distribution, > 1 flattens it; 0 is greedy
    top_k: int = 0  # sampling: only the k most probable tokens; 0 = all
    top_p: float = 1.0  # sampling: only the most probable tokens holding this much probability (nucleus)
    seed: int = 1  # sampling: the same seed and input give the same samples


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(key: str, value, hint):
    """Convert a YAML or command-line value to the field's type, or fail naming the key."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(key, v, item) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not number.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(number)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {hint} for {key}")


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}'; allowed keys{' in ' + prefix[:-1] if prefix else ''}: "
                              f"{', '.join(names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                example = f"{dotted}.{dataclasses.fields(hint)[0].name}"
                raise ConfigError(f"'{dotted}' is a section; give it keys such as {example}")
            kwargs[key] = _build(hint, value, f"{dotted}.")
        else:
            kwargs[key] = _coerce(dotted, value, hint)
    return cls(**kwargs)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """`["train.warmup_steps=8000", ...]` -> nested dict of YAML-parsed values."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.max_steps=100")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"override key {key!r} must be section.key, e.g. model.d_model=256")
        value = yaml.safe_load(raw) if raw.strip() else ""
        nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def from_dict(values: dict) -> Config:
    config = _build(Config, values or {}, "")
    m, t = config.model, config.train
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} must be divisible by model.n_heads={m.n_heads} "
                          f"(d_k = d_model / h)")
    for key in ("max_tokens", "accumulate", "valid_every", "save_every", "log_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {getattr(t, key)}")
    d = config.decode
    if not d.sampling and d.n_best > max(d.beam_size, 1):
        raise ConfigError(f"decode.n_best={d.n_best} needs a beam at least as wide: add decode.beam_size={d.n_best}")
    if d.n_best < 1 or d.temperature < 0 or d.top_k < 0 or not 0 < d.top_p <= 1:
        raise ConfigError(f"decode settings out of range (n_best={d.n_best}, temperature={d.temperature}, "
                          f"top_k={d.top_k}, top_p={d.top_p}): n_best >= 1, temperature >= 0, top_k >= 0, "
                          f"0 < top_p <= 1")
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or only defaults when `path` is None) and apply dotted overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            choices = sorted(str(p) for p in Path("configs").glob("*.yaml"))
            available = f"; available: {', '.join(choices)}" if choices else ""
            raise ConfigError(f"config file {path} not found{available}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold sections (model:, data:, ...), "
                              f"not {type(values).__name__}")
    return from_dict(merge(values, parse_overrides(overrides)))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_plain(config.to_dict()), sort_keys=False))


def to_plain(values):
    """Tuples -> lists, so the dict survives YAML and `torch.load(weights_only=True)`."""
    if isinstance(values, dict):
        return {k: to_plain(v) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return [to_plain(v) for v in values]
    return values
