"""``trainframe eval``: loss, perplexity and bits per character of a run or an export, or its
lm-evaluation-harness scores (``--tasks``, ``trainframe.downstream``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from trainframe.engine import evaluation
from trainframe.errors import UserError
from trainframe.evaluate import evaluate
from trainframe.progress import Progress
from trainframe.protocols import HasCharsPerToken


def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, metavar="RUN_DIR|EXPORT_DIR", help="a run directory or an export directory")
    p.add_argument("--config", type=Path, help="take the dataset from this config instead of the run's")
    p.add_argument("--split", choices=["val", "train"], default="val",
                   help="val: the dataset's held-out windows; train: the first training batches of the run's seed")
    p.add_argument("--checkpoint", default="latest", help="best, latest or a step number (run directories)")
    p.add_argument("--batches", type=int, default=None,
                   help="batches to evaluate (default: the whole val split; trainer.eval_batches for train)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default: the run's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--packed", action="store_true", help="export directories: use the packed ternary weights")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    g = p.add_argument_group("downstream tasks (lm-evaluation-harness, docs/evals.md; pip install 'trainframe[eval]')")
    g.add_argument("--tasks", metavar="TASKS",
                   help="comma-separated lm_eval task names or task YAML files: score the model on them instead of "
                        "the loss (a run's scores are appended to its metrics.jsonl)")
    g.add_argument("--include-path", type=Path, action="append", metavar="DIR",
                   help="a folder of lm_eval task YAML files to index too (repeatable)")
    g.add_argument("--num-fewshot", type=int, default=None, metavar="N", help="few-shot examples (default: each task's)")
    g.add_argument("--limit", type=float, default=None, metavar="N",
                   help="at most N documents per task (a fraction when below 1); for quick checks")


def _dataset(cfg, data_cfg, tokenizer, context: int):
    from trainframe.engine.build import build_dataset
    from trainframe.plugins import current

    return build_dataset(data_cfg, current(), tokenizer, context, seed=cfg.seed)


def _batches(dataset, split: str, batch_size: int, count: int | None):
    if split == "val":
        return dataset.val_batches(batch_size, count if count is not None else sys.maxsize)
    return (dataset.next_batch(batch_size) for _ in range(count))


def _source(path: Path, checkpoint: Path | None, packed: bool) -> str:
    from trainframe.export import TERNARY, WEIGHTS, _read_manifest

    if checkpoint is not None:
        return checkpoint.name
    c = _read_manifest(path)["checkpoint"]
    return f"export of {c['file']} (step {c['step']}), {TERNARY if packed else WEIGHTS}"


def eval_main(args: argparse.Namespace) -> int:
    from trainframe.runs import load_run
    from trainframe.config import load_config
    from trainframe.plugins import current

    if args.tasks is not None:
        from trainframe.downstream import downstream_main

        return downstream_main(args)
    for flag, value in (("--include-path", args.include_path), ("--num-fewshot", args.num_fewshot),
                        ("--limit", args.limit)):
        if value is not None:
            raise UserError(f"{flag}: applies to downstream tasks; add --tasks")

    for name in ("batches", "batch_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")
    cfg, tokenizer, model, checkpoint, _ = load_run(args.path, args.checkpoint, args.device, packed=args.packed)
    data_cfg = load_config(args.config, [], current().registry) if args.config else cfg
    device = next(model.parameters()).device
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        dataset = _dataset(cfg, data_cfg, tokenizer, model.config.context)  # its log lines: not the JSON
    batch_size = args.batch_size or cfg.trainer.batch_size
    count = args.batches if args.batches is not None or args.split == "val" else cfg.trainer.eval_batches
    batches = _batches(dataset, args.split, batch_size, count)

    with Progress(sys.stderr.isatty() and not args.json) as bar:
        task = bar.task("evaluating", count)  # None (the whole val split): size unknown
        loss, tokens, n = evaluate(model, batches, device, lambda k: bar.update(task, completed=k))
    if n == 0 or tokens == 0:
        raise UserError(f"{data_cfg.component('data')[0]} dataset: the {args.split} split has no tokens to evaluate "
                        "(raise data.val_fraction?)")
    bpc = args.split == "val" and isinstance(dataset, HasCharsPerToken)
    scores = evaluation.scores(loss, dataset.chars_per_token if bpc else None)
    result = {"path": str(args.path), "source": _source(args.path, checkpoint, args.packed),
              "dataset": data_cfg.component("data")[0], "split": args.split, "batches": n, "tokens": tokens,
              **{"perplexity" if k == "ppl" else k: v for k, v in scores.items()}}  # loss, perplexity, bpc
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.path} ({result['source']}): {result['dataset']} {args.split} split, {n} batches, {tokens:,} tokens")
    bpc = f"   bits per character {result['bpc']:.4f}" if "bpc" in result else ""
    print(f"loss {loss:.4f}   perplexity {result['perplexity']:.3f}{bpc}")
    return 0
