"""``trainframe plot RUN_DIR``: the train and validation loss curves of a run as a PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainframe.errors import UserError
from trainframe.fileio import atomic_path


def plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory (reads its metrics.jsonl)")
    p.add_argument("--out", type=Path, help="the PNG to write (default RUN_DIR/loss.png)")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl; expected a run directory written by `trainframe train`")
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if n < len(lines):  # a torn last line of a live run is fine
                raise UserError(f"{path}:{n}: not JSON") from None
    return rows


def plot_main(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(args.run_dir)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not val:
        raise UserError(f"{args.run_dir / 'metrics.jsonl'}: no loss or val_loss rows to plot")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", lw=1.5, ms=3, label="val loss")
        best = min(val, key=lambda sv: sv[1])
        ax.annotate(f"best {best[1]:.3f} @ {best[0]}", best, textcoords="offset points", xytext=(0, 10), ha="center")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(args.run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    out = args.out or args.run_dir / "loss.png"
    fig.tight_layout()
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    print(f"wrote {out}")
    return 0
