"""Draw a run's training curves (training loss and validation BLEU against minutes) as an SVG.

    python -m scripts.plot --run-dir runs/multi30k [--out docs/multi30k_curves.svg]

Reads <run>/train_log.jsonl; needs no plotting library (the SVG is written by hand).
"""
import argparse
import json
import shlex
from pathlib import Path

from scripts.cli import run
from transformer.errors import UserError

W, H, PAD = 420, 260, 48


def panel(x0: int, points: list[tuple[float, float]], title: str, color: str) -> str:
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_max, y_min, y_max = max(xs) or 1.0, min(ys), max(ys)
    y_min, y_max = (y_min - 0.5, y_max + 0.5) if y_min == y_max else (y_min, y_max)

    def sx(x):
        return x0 + PAD + (W - 2 * PAD) * x / x_max

    def sy(y):
        return H - PAD - (H - 2 * PAD) * (y - y_min) / (y_max - y_min)

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts = [f'<text x="{x0 + W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
             f'<line x1="{x0 + PAD}" y1="{H - PAD}" x2="{x0 + W - PAD}" y2="{H - PAD}" stroke="black"/>',
             f'<line x1="{x0 + PAD}" y1="{PAD}" x2="{x0 + PAD}" y2="{H - PAD}" stroke="black"/>',
             f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>',
             f'<text x="{x0 + W / 2}" y="{H - 12}" text-anchor="middle" font-size="12">minutes</text>']
    for k in range(5):
        y = y_min + (y_max - y_min) * k / 4
        x = x_max * k / 4
        parts.append(f'<text x="{x0 + PAD - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" font-size="10">{y:.1f}</text>')
        parts.append(f'<text x="{sx(x):.1f}" y="{H - PAD + 14}" text-anchor="middle" font-size="10">{x:.0f}</text>')
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/multi30k")
    parser.add_argument("--out", help="SVG file (default: <run>/curves.svg)")
    args = parser.parse_args(argv)
    log = Path(args.run_dir) / "train_log.jsonl"
    if not log.is_file():
        raise UserError(f"no {log}; train first: make train RUN={shlex.quote(args.run_dir)}")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    loss = [(r["minutes"], r["loss"]) for r in rows if "loss" in r]
    bleu = [(r["minutes"], r["valid_bleu"]) for r in rows if "valid_bleu" in r]
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H}" font-family="sans-serif">\n'
           f'<rect width="100%" height="100%" fill="white"/>\n'
           f"{panel(0, loss, 'training loss (label-smoothed)', '#1f77b4')}\n"
           f"{panel(W, bleu, 'validation BLEU (greedy)', '#d62728')}\n</svg>\n")
    out = Path(args.out or Path(args.run_dir) / "curves.svg")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg)
    print(out)
    return 0


if __name__ == "__main__":
    run(main)
