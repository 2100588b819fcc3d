"""Export to CTranslate2, and translate with the export (`pip install -e ".[ct2]"`).

CTranslate2 runs Transformer inference in C++ with its own kernels (int8 on CPU among them). The
export fills its own Transformer specification, post-norm (or pre-norm) as the model was trained,
with this project's weights, sinusoid table and vocabulary: the source ends in </s>, the target
starts with <s>, embeddings are scaled by sqrt(D) and shared with the pre-softmax projection.

CTranslate2 normalizes beam scores by length^alpha, not GNMT's ((5 + length) / 6)^alpha, so the
export's translator asks for every finished hypothesis with its log-probability and ranks them
with the project's own length penalty (search.rerank).
"""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .config import from_dict, to_plain
from .errors import UserError
from .model import fixed_positions
from .search import Hypothesis, rerank
from .tokenizer import Tokenizer
from .translation import Translator, decode_config

log = logging.getLogger(__name__)


class ExportError(UserError):
    """CTranslate2 is missing, or an export folder cannot be used."""


def _ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise ExportError('CTranslate2 is not installed; install the optional extra: pip install -e ".[ct2]"') from None
    return ctranslate2


def export(path: str | Path, out: str | Path, quantization: str | None = None) -> Path:
    """Write the checkpoint at `path` as a CTranslate2 model folder `out`; `quantization` as
    CTranslate2 takes it ("int8", "bfloat16", ...; None keeps float32)."""
    ct2 = _ctranslate2()
    from ctranslate2.specs import transformer_spec

    state = checkpoint.load(path)
    config, tokenizer = from_dict(state["config"]), Tokenizer.from_str(state["tokenizer"])
    m, w = config.model, {k: v.float().numpy() for k, v in state["model"].items()}
    variants = {key: getattr(m, key) for key, paper in (("d_k", 0), ("attention_score", "scaled_dot"),
                                                         ("decoder_mask", "causal")) if getattr(m, key) != paper}
    if variants:
        raise ExportError(f"CTranslate2's Transformer has no place for {variants}; export a model of the paper's "
                          f"attention")
    spec = transformer_spec.TransformerSpec.from_config((m.encoder_layers, m.decoder_layers), m.n_heads,
                                                        pre_norm=m.norm == "pre")
    spec.config.layer_norm_epsilon = m.layer_norm_eps
    spec.config.add_source_eos = True  # the project's sources end in </s>
    pe = w["pe"] if m.positional == "learned" else fixed_positions(m).numpy()
    src_embedding = "embedding.weight" if m.share_embeddings else "src_embedding.weight"
    for side, embedding in ((spec.encoder, src_embedding), (spec.decoder, "embedding.weight")):
        (side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings).weight = w[embedding]
        side.scale_embeddings = True
        side.position_encodings.encodings = pe
    spec.decoder.projection.weight = w["embedding.weight"]
    if m.norm == "pre":
        _norm(spec.encoder.layer_norm, w, "encoder_norm")
        _norm(spec.decoder.layer_norm, w, "decoder_norm")
    for i, layer in enumerate(spec.encoder.layer):
        p = f"encoder.{i}."
        _attention(layer.self_attention, w, p + "self_attn.", p + "res_attn.norm", self_attention=True)
        _ffn(layer.ffn, w, p)
    for i, layer in enumerate(spec.decoder.layer):
        p = f"decoder.{i}."
        _attention(layer.self_attention, w, p + "self_attn.", p + "res_self.norm", self_attention=True)
        _attention(layer.attention, w, p + "cross_attn.", p + "res_cross.norm", self_attention=False)
        _ffn(layer.ffn, w, p)
    spec.register_source_vocabulary(tokenizer.tokens())
    spec.register_target_vocabulary(tokenizer.tokens())
    spec.validate()
    spec.optimize(quantization=quantization)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    (out / "tokenizer.json").write_text(state["tokenizer"])  # the project's, beside CTranslate2's vocabulary
    (out / "checkpoint.json").write_text(json.dumps({  # what translation needs besides the weights
        "config": to_plain(state["config"]), "decode": to_plain(state.get("decode", {})),
        "step": state.get("state", {}).get("step", 0), "source": str(path)}))
    log.info(f"CTranslate2 {ct2.__version__} model ({quantization or 'float32'}) from {path} -> {out}")
    return out


class CT2Translator(Translator):
    """A Translator whose decoding runs in CTranslate2, over a folder written by `export`.

    `decode.precision` becomes CTranslate2's compute type (int8 quantizes the float32 export on load).
    Sampling stays with the project's decoder."""

    def __init__(self, folder: str | Path, device: str = "cpu", overrides: list[str] = ()):
        ct2, folder = _ctranslate2(), Path(folder)
        if not (folder / "model.bin").is_file() or not (folder / "checkpoint.json").is_file():
            raise ExportError(f"{folder} holds no exported model; write one with: make export")
        saved = json.loads((folder / "checkpoint.json").read_text())
        self.config, self.tuned_on = decode_config(saved["config"], saved["decode"], overrides)
        if self.config.decode.sampling:
            raise ExportError("sampling runs in the project's decoder; drop ENGINE=ct2 to sample")
        self.tokenizer, self.step = Tokenizer.from_str((folder / "tokenizer.json").read_text()), saved["step"]
        compute = {"float32": "float32", "bfloat16": "bfloat16", "int8": "int8_float32"}[self.config.decode.precision]
        # A thread a call, several calls at once: faster than threads sharing each call at these sizes.
        # CTranslate2 sets the OpenMP thread count it shares with torch: torch's is put back.
        threads = torch.get_num_threads()
        self.engine = ct2.Translator(str(folder), device=device, compute_type=compute, inter_threads=threads,
                                     intra_threads=1)
        torch.set_num_threads(threads)
        self.vocabulary = self.tokenizer.tokens()
        self.model = self.models = None  # no torch model: attention pictures and validation need one

    def translate_ids(self, src_ids: list[list[int]], beam_size: int | None = None, n_best: int | None = None,
                      use_cache: bool = True):
        """As Translator.translate_ids. One call per source length, since the output limit
        (search.max_output_lengths) is per sentence in the project's search and per call in
        CTranslate2's; the calls run asynchronously, one a thread."""
        cfg = self.config.decode
        beam = max(cfg.beam_size if beam_size is None else beam_size, 1)
        n_best = cfg.n_best if n_best is None else n_best
        by_length = sorted((i for i, seq in enumerate(src_ids) if seq), key=lambda i: len(src_ids[i]))
        calls = []
        for length, group in itertools.groupby(by_length, key=lambda i: len(src_ids[i])):
            group = list(group)
            size = max(cfg.max_tokens // (beam * length), 1)  # sentences a call: decode.max_tokens, as batching
            for start in range(0, len(group), size):
                indices = group[start : start + size]
                calls.append((indices, self.engine.translate_batch(
                    [[self.vocabulary[t] for t in src_ids[i]] for i in indices], beam_size=beam,
                    num_hypotheses=beam, length_penalty=0, return_scores=True,  # raw log-probabilities, ranked below
                    max_decoding_length=min(length + cfg.max_extra_len, self.max_source_tokens),  # before </s>
                    asynchronous=True)))
        results: list = [[] for _ in src_ids]
        for indices, pending in calls:
            for i, result in zip(indices, (p.result() for p in pending), strict=True):
                hyps = [Hypothesis([self.tokenizer.hf.token_to_id(t) for t in tokens], score, score)
                        for tokens, score in zip(result.hypotheses, result.scores, strict=True)]
                results[i] = (rerank(hyps, cfg.length_penalty) if beam > 1 else hyps)[:n_best]
        return results


def _norm(spec, w: dict, name: str) -> None:
    spec.gamma, spec.beta = w[name + ".weight"], w[name + ".bias"]


def _attention(spec, w: dict, p: str, norm: str, self_attention: bool) -> None:
    q, k, v, o = (w[p + f"w_{x}.weight"] for x in "qkvo")
    if self_attention:
        spec.linear[0].weight = np.concatenate([q, k, v])  # fused (3D, D)
    else:
        spec.linear[0].weight, spec.linear[1].weight = q, np.concatenate([k, v])
    spec.linear[-1].weight = o
    _norm(spec.layer_norm, w, norm)


def _ffn(spec, w: dict, p: str) -> None:
    spec.linear_0.weight, spec.linear_0.bias = w[p + "ffn.w_1.weight"], w[p + "ffn.w_1.bias"]
    spec.linear_1.weight, spec.linear_1.bias = w[p + "ffn.w_2.weight"], w[p + "ffn.w_2.bias"]
    _norm(spec.layer_norm, w, p + "res_ffn.norm")
