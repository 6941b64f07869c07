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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); expected the JSON lines a run writes") from None
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            if n < len(lines):  # a torn last line of a live run is fine
                raise UserError(f"{path}:{n}: not JSON") from None
            continue
        if not (isinstance(row, dict) and isinstance(row.get("step"), int)):
            raise UserError(f"{path}:{n}: expected an object with a 'step' number, got {line[:60]}")
        rows.append(row)
    return rows


def plot_main(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(args.run_dir)
    # null is a non-finite loss (JSON has no NaN): left out
    train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in rows if isinstance(r.get("val_loss"), (int, float))]
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
    formats = fig.canvas.get_supported_filetypes()  # savefig picks the format by suffix
    if out.suffix[1:].lower() not in formats:
        plt.close(fig)
        raise UserError(f"--out: {out}: expected a file name ending in one of "
                        f"{', '.join('.' + f for f in sorted(formats))} (the format of the plot)")
    fig.tight_layout()
    try:
        with atomic_path(out, what="the plot") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    print(f"wrote {out}")
    return 0
