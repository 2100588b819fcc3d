"""Watching the data move: one sentence pair through the real model, each stage with its paper name
and its tensor's shape in the shape legend's letters (transformer/model.py).

Forward hooks on the model's own modules record what flows through them, in the order it flows;
each shape is checked against its letters. `make trace` teacher-forces the model's own greedy
translation, so the most probable token at each position is that translation again.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .batching import collate
from .checkpoint import CheckpointError, find_for_inference
from .config import load_config
from .model import Transformer
from .tokenizer import Tokenizer
from .translation import Translator


@dataclass
class Stage:
    depth: int  # 0 stack, 1 layer, 2 inside a layer
    name: str  # what the paper calls it
    letters: str = ""  # the shape legend's letters, e.g. "B S D"; empty for a heading
    shape: tuple[int, ...] = ()
    tokens: str = ""  # the tokens of a stage of ids


@torch.no_grad()
def trace(model: Transformer, tokenizer: Tokenizer, src: list[int], tgt: list[int]) -> tuple[list[Stage], dict]:
    """(stages, sizes): `model` reading source ids `src` and teacher-forced target ids `tgt` (no specials);
    sizes maps each letter to its number."""
    model.eval()
    batch = collate([src], [tgt]).to(next(model.parameters()).device)
    m, attn = model.config, model.encoder[0].self_attn
    sizes = {"B": 1, "S": batch.src.size(1), "T": batch.tgt_in.size(1), "D": m.d_model, "H": m.n_heads,
             "dk": attn.d_k, "dv": m.d_model // m.n_heads, "F": m.d_ff, "V": model.vocab_size}
    stages: list[Stage] = []
    hooks = []
    side = {}  # "L": the length letter of the stack running now (S or T); "quiet": record nothing

    def add(depth: int, name: str, letters: str = "", tensor=None, tokens: str = ""):
        letters = letters.replace("L", side.get("L", "S"))
        shape = tuple(tensor.shape) if tensor is not None else ()
        if letters and shape != tuple(sizes[letter] for letter in letters.split()):
            raise AssertionError(f"{name}: shape {shape} is not ({letters})")
        stages.append(Stage(depth, name, letters, shape, tokens))

    def show(module, name: str, letters: str, depth: int = 2):
        """Record the module's output as stage `name` whenever it runs."""
        def hook(mod, args, output):
            add(depth, name, letters, output)  # returns None: the output is left as it is
        hooks.append(module.register_forward_hook(hook))

    sides = iter([("S", "encoder (Sec. 3.1)", "source tokens x, </s> appended"),
                  ("T", "decoder (Sec. 3.1)", "target tokens: <s>, then the translation")])

    def embedding(module, args, output):  # the source's, then the target's (one module when shared)
        side["L"], stack, what = next(sides)
        add(0, stack)
        add(1, what, "B L", args[0], " ".join(tokenizer.pieces(args[0][0])))
        add(1, "Embedding(x) x sqrt(D) (Sec. 3.4)", "B L D", output)  # scaled in Transformer.embed

    def attention(mha, name: str, memory: bool):
        """Q, K and V in heads, the softmax of the scores, and the heads joined by W^O."""
        kv, kv_letter = ("memory", "S") if memory else ("x", "L")
        for linear, what, letters in ((mha.w_q, f"{name}: Q = x W^Q, in H heads", "B H L dk"),
                                      (mha.w_k, f"K = {kv} W^K", f"B H {kv_letter} dk"),
                                      (mha.w_v, f"V = {kv} W^V", f"B H {kv_letter} dv")):
            def project(mod, args, output, what=what, letters=letters):
                if not side.get("quiet"):
                    add(2, what, letters, mha.split_heads(output))
            hooks.append(linear.register_forward_hook(project))

        def weights(module, args, kwargs, output):
            masks = {k: v for k, v in kwargs.items() if k in ("mask", "causal")}
            side["quiet"] = True  # attention_weights projects Q and K again: shown once
            weights = module.attention_weights(*args, **masks)  # SDPA does not return them
            side["quiet"] = False
            score = "softmax(Q K^T / sqrt(dk))" if mha.score == "scaled_dot" else f"softmax({mha.score} scores)"
            add(2, score + (", later positions masked" if masks.get("causal") else ""), f"B H L {kv_letter}", weights)
            add(2, "Concat(head_1..head_H) W^O", "B L D", output)
        hooks.append(mha.register_forward_hook(weights, with_kwargs=True))

    residual = "LayerNorm(x + Dropout(Sublayer(x)))" if m.norm == "post" else "x + Dropout(Sublayer(LayerNorm(x)))"
    hooks.append(model.embedding.register_forward_hook(embedding))
    if model.src_embedding is not model.embedding:
        hooks.append(model.src_embedding.register_forward_hook(embedding))
    show(model.dropout, "+ positional encoding (Sec. 3.5), then dropout", "B L D", depth=1)
    for stack, layers in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, layer in enumerate(layers):
            hooks.append(layer.register_forward_pre_hook(lambda mod, args, i=i: add(1, f"layer {i + 1}")))
            if stack == "encoder":
                attention(layer.self_attn, "self-attention (Sec. 3.2.2)", memory=False)
                show(layer.res_attn, residual, "B L D")
            else:
                attention(layer.self_attn, "masked self-attention (Sec. 3.2.3)", memory=False)
                show(layer.res_self, residual, "B L D")
                attention(layer.cross_attn, "encoder-decoder attention (Sec. 3.2.3)", memory=True)
                show(layer.res_cross, residual, "B L D")
            show(layer.ffn.w_1, "feed-forward (Sec. 3.3): x W_1 + b_1, then ReLU", "B L F")
            show(layer.ffn, "FFN(x) = max(0, x W_1 + b_1) W_2 + b_2", "B L D")
            show(layer.res_ffn, residual.replace("Sublayer", "FFN"), "B L D")
    show(model.encoder_norm, "encoder output: the memory the decoder attends to", "B S D", depth=0)
    try:
        logits = model(batch.src, batch.src_pad, batch.tgt_in)
    finally:
        for hook in hooks:
            hook.remove()
    add(0, "logits: the decoder output times the shared embedding matrix (Sec. 3.4)", "B T V", logits)
    chosen = logits.argmax(-1)
    add(0, "the most probable token at each position: argmax of the softmax", "B T", chosen,
        " ".join(tokenizer.pieces(chosen[0])))
    return stages, sizes


def describe(stages: list[Stage], sizes: dict) -> str:
    """The stages as `make trace` prints them."""
    lines = ["shape legend: " + ", ".join(f"{letter}={n}" for letter, n in sizes.items())]
    for s in stages:
        label = "  " * s.depth + s.name
        if not s.letters:
            lines.append(label)
            continue
        shape = f"({', '.join(s.letters.split())})"
        lines.append(f"{label:<72} {shape:<14} {str(s.shape):<16} {s.tokens}".rstrip())
    return "\n".join(lines)


def model_to_trace(run_dir: str, ckpt: str | None, config: str, overrides: list[str]) -> tuple[Translator, str]:
    """(translator, what it is): the run's checkpoint, or with none there an untrained model of
    `config` (seeded by it) with the vocabulary of its prepared data."""
    try:
        path = find_for_inference(run_dir, ckpt)
    except CheckpointError:  # no checkpoint in the run: the config's model, untrained
        from .data import prepare

        cfg = load_config(config, overrides)
        tokenizer = prepare(cfg).tokenizer
        torch.manual_seed(cfg.train.seed)
        model = Transformer(cfg.model, tokenizer.vocab_size)
        return Translator(model, tokenizer, cfg), f"untrained, {config} (no checkpoint in {run_dir})"
    return Translator.from_checkpoint(path, "cpu"), str(path)
