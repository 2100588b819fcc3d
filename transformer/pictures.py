"""Pictures, drawn with matplotlib: attention with its tokens on the axes (TensorBoard, `make translate
ATTENTION=`, `make trace`) and the lab's BLEU bars and validation-loss curves (`make ablate`)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files and TensorBoard only: no window, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .batching import collate  # noqa: E402

CELL = 0.3  # inches a token takes on an axis: room for its label


def attention_figure(panels: list[list[tuple[str, np.ndarray]]], rows: list[str], cols: list[str]) -> Figure:
    """A grid of attention maps: panels[i][j] = (title, weights (len(rows), len(cols))), each with
    the attending tokens (queries) down the side and the attended ones (keys) along the bottom."""
    n_rows, n_cols = len(panels), max(len(row) for row in panels)
    width, height = 1.2 + CELL * len(cols), 1.0 + CELL * len(rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * width, n_rows * height), squeeze=False)
    for i, row in enumerate(panels):
        for j in range(n_cols):
            ax = axes[i][j]
            if j >= len(row):
                ax.axis("off")
                continue
            title, weights = row[j]
            ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal")
            ax.set_title(title, fontsize=9)
            ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=8)
            ax.set_yticks(range(len(rows)), rows if j == 0 else [""] * len(rows), fontsize=8)
            ax.tick_params(length=0)
    fig.tight_layout()
    return fig


@torch.no_grad()
def attention_pictures(model, tokenizer, src: list[int], tgt: list[int], heads: bool = False,
                       kinds: tuple[str, ...] = ("encoder_self", "decoder_self", "cross")) -> dict[str, Figure]:
    """A figure per kind of attention of `model` reading source ids `src` and teacher-forced target
    ids `tgt` (no special tokens): a row per layer, its heads averaged, and with `heads` each head
    beside it. Encoder and decoder self-attention have their inputs on both axes; cross-attention
    has the target token being written down the side and the source along the bottom."""
    batch = collate([src], [tgt]).to(next(model.parameters()).device)
    maps = model.attention_maps(batch.src, batch.src_pad, batch.tgt_in)  # kind -> layers of (1, H, Tq, Tk)
    source, tgt_in, tgt_out = (tokenizer.pieces(t[0]) for t in (batch.src, batch.tgt_in, batch.tgt_out))
    labels = {"encoder_self": (source, source), "decoder_self": (tgt_in, tgt_in), "cross": (tgt_out, source)}
    figures = {}
    for kind in kinds:
        panels = []
        for i, weights in enumerate(maps[kind]):
            weights = weights[0].float().cpu().numpy()  # (H, Tq, Tk)
            row = [(f"layer {i + 1}, heads averaged", weights.mean(0))]
            row += [(f"layer {i + 1}, head {h + 1}", w) for h, w in enumerate(weights)] if heads else []
            panels.append(row)
        figures[kind] = attention_figure(panels if heads else [sum(panels, [])], *labels[kind])
    return figures


def translation_attention(translator, sentence: str) -> Figure:
    """The cross-attention of the (first) model's best translation of `sentence`, heads averaged
    and each head, a row per layer: target tokens down the side, source tokens along the bottom."""
    src = translator.encode([sentence.strip()])[0]
    best = translator.translate_ids([src])[0]
    tgt = best[0].tokens if best else []
    return attention_pictures(translator.model, translator.tokenizer, src, tgt, heads=True, kinds=("cross",))["cross"]


def ablation_figure(results: list[dict], title: str, base: set[str]) -> Figure:
    """Validation and test BLEU of each variant as bars, the test range of the `base` runs (the base
    variant's seeds) shaded; the validation loss of each variant against steps, the base's dashed."""
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, max(3.5, 1.2 + 0.32 * len(results))), width_ratios=(1, 1.2))
    names = [r["variant"] for r in results][::-1]
    y = np.arange(len(names))
    by_name = {r["variant"]: r for r in results}
    seeds = [r["test_bleu"] for r in results if r["variant"] in base]
    if len(seeds) > 1:
        bars.axvspan(min(seeds), max(seeds), color="0.85", label="base, test: range over seeds")
    bars.barh(y + 0.2, [by_name[n]["valid_bleu"] for n in names], 0.4, label="val", color="#9ecae1")
    bars.barh(y - 0.2, [by_name[n]["test_bleu"] for n in names], 0.4, label="test", color="#3182bd")
    bars.set_yticks(y, names, fontsize=8)
    bars.set_title("BLEU (beam search)", fontsize=10)
    bars.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3)  # below: bars start at 0
    colors = plt.get_cmap("tab20")
    for k, r in enumerate(results):
        steps, losses = zip(*r["valid_loss_curve"], strict=True) if r["valid_loss_curve"] else ((), ())
        curves.plot(steps, losses, color=colors(k % 20), label=r["variant"], lw=1.2,
                    ls="--" if r["variant"] in base else "-")
    curves.set_title("validation loss (label-smoothed)", fontsize=10)
    curves.set_xlabel("step")
    curves.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
