"""``trainframe eval-completion``: how well a workflow model completes and infills workflows it
never trained on.

- **Held-out loss**: mean loss per token, perplexity and bits per (compact JSON) character over
  every document of ``--data`` (default: the run's validation repositories), read as the
  validation windows are.
- **Completion**: at cut points where an editor would ask (the start of a job, of a step, of a
  ``with:`` block), greedy constrained completion from everything before the cut: whether its
  next 16 tokens are the original's (and how many of them agree before the first difference), and
  whether the completed document is schema-valid.
- **Infill** (runs trained with FIM): a step or a job is regenerated from everything around it:
  exact match, schema validity of the whole document, and whether the same actions (``uses:``)
  were chosen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from trainframe import SupportsInfill
from trainframe.errors import UserError
from trainframe.fileio import relative_note

MATCH = 16  # tokens after a cut compared with the original


def eval_completion_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory (or export) of a workflow model")
    p.add_argument("--data", type=Path,
                   help="workflows the model never trained on: a .jsonl(.xz/.gz), a directory or a file "
                        "(default: the run's validation repositories)")
    p.add_argument("--cuts", type=int, default=64, help="completion cut points, drawn at random (default 64)")
    p.add_argument("--infills", type=int, default=64, help="steps and jobs to infill, FIM runs only (default 64)")
    p.add_argument("--max-tokens", type=int, default=512,
                   help="new tokens per completion at most; infills get at most half the context (default 512)")
    p.add_argument("--checkpoint", default="best", help="best, latest or a step number (default best)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per loss batch (default 32)")
    p.add_argument("--seed", type=int, default=0, help="which cut points and values are drawn")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _documents(tokenizer, cfg, names: set[str]):
    """[(name, value, ids, spans, entries)] of the documents of ``cfg``'s corpus named in ``names``."""
    from .completion import encode_with_spans
    from .dataset import corpus_sources, iter_corpus
    from .schema_tokenizer.yaml_loader import load_document

    out = []
    for name, _, text, error in iter_corpus(corpus_sources(cfg), isinstance(cfg.path, str)):
        if error is not None or name not in names:
            continue
        try:
            value = load_document(text)
            ids, spans, entries = encode_with_spans(tokenizer, value)
        except (ValueError, RecursionError):
            continue
        out.append((name, value, ids, spans, entries))
    return out


def _cut_kind(path: tuple) -> str | None:
    if len(path) == 2 and path[0] == "jobs":
        return "job"
    if len(path) == 4 and path[0] == "jobs" and path[2] == "steps":
        return "step"
    if path and path[-1] == "with":
        return "with"
    return None


def _uses(value) -> list:
    """The actions a step or a job calls, in order."""
    if not isinstance(value, dict):
        return []
    if "steps" in value and isinstance(value["steps"], list):
        return [s.get("uses") for s in value["steps"] if isinstance(s, dict) and "uses" in s] + \
            ([value["uses"]] if "uses" in value else [])
    return [value["uses"]] if "uses" in value else []


def held_out(model, tokenizer, data_cfg, path: Path | None, batch_size: int) -> tuple[dict, list]:
    """(loss, perplexity and bits per character, the documents) of every workflow of ``path``, or
    without it of the run's validation repositories (the windows ``trainframe eval`` reads)."""
    from trainframe.evaluate import evaluate

    from .dataset import WorkflowWindows, open_corpus, split_docs

    cfg = data_cfg if path is None else data_cfg.model_copy(update={"path": str(path), "epoch_offset": False})
    tokens, meta, _ = open_corpus(cfg, tokenizer)
    docs = meta["docs"]
    if not docs:
        raise UserError(f"--data: {cfg.label}: no workflow could be encoded")
    chosen = split_docs([d[1] for d in docs], cfg.val_ratio)[1] if path is None else np.arange(len(docs))
    if not len(chosen):
        raise UserError(f"{cfg.label}: the run has no validation repositories (data.val_ratio 0); pass --data")
    lengths = np.array([d[2] for d in docs], dtype=np.int64)
    chars = np.array([d[3] for d in docs], dtype=np.int64)
    windows = WorkflowWindows(tokens, lengths, chars, chosen, chosen, cfg,
                              cfg.layout(tokenizer, model.config.context), seed=0)
    device = next(model.parameters()).device
    loss, count, _ = evaluate(model, windows.val_batches(batch_size, sys.maxsize), device)
    figures = {"documents": len(chosen), "repositories": len({docs[i][1] for i in chosen}),
               "skipped": len(meta["skipped"]) if path is not None else None, "tokens": count, "loss": loss,
               "perplexity": math.exp(min(loss, 50)), "bpc": loss / math.log(2) / windows.chars_per_token}
    return figures, _documents(tokenizer, cfg, {docs[i][0] for i in chosen.tolist()})


def _greedy(model, tokenizer, start, prompt, max_tokens, allowed_new=None):
    from trainframe.sampling import sample_documents

    (new, finished), = sample_documents(model, tokenizer, start, prompt, 1, max_tokens=max_tokens, batch_size=1,
                                        constrained=True, temperature=0.0, top_k=None, allowed_new=allowed_new)
    return new, finished


def completion_scores(model, tokenizer, start, docs, validator, cuts: int, max_tokens: int, rng, progress) -> dict:
    points = [(d, e, _cut_kind(p)) for d, (_, _, _, _, entries) in enumerate(docs)
              for p, e in entries.items() if _cut_kind(p)]
    picks = rng.permutation(len(points))[:cuts]
    by_kind: dict[str, list] = {}
    for j in picks.tolist():
        d, cut, kind = points[j]
        ids = docs[d][2]
        try:
            new, finished = _greedy(model, tokenizer, start, ids[:cut], max_tokens)
        except UserError:  # the document's rest does not fit in --max-tokens from here
            continue
        target = ids[cut: cut + MATCH]
        valid = False
        if finished:
            try:
                valid = validator.is_valid(tokenizer.decode_value(ids[:cut] + new)[0])
            except ValueError:
                valid = False
        agree = next((i for i, (a, b) in enumerate(zip(new, target)) if a != b), min(len(new), len(target)))
        by_kind.setdefault(kind, []).append((new[: len(target)] == target, agree, valid, finished))
        progress()
    return _summary(by_kind, ("match16", "agree", "valid", "finished"))


def infill_scores(model, tokenizer, layout, docs, validator, count: int, max_tokens: int, rng, progress) -> dict:
    from .completion import Infill, value_at

    points = [(d, p) for d, doc in enumerate(docs) for p in doc[3] if _cut_kind(p) in ("job", "step")]
    by_kind: dict[str, list] = {}
    for j in rng.permutation(len(points))[:count].tolist():
        d, path = points[j]
        value = docs[d][1]
        try:
            task = Infill(tokenizer, layout, value, path, max_tokens)
        except UserError:
            continue
        middle, finished = _greedy(model, tokenizer, task.prompt, [], max_tokens, allowed_new=task.allowed)
        exact = middle == task.original
        valid, same = False, None
        try:
            new_doc = tokenizer.decode_value(task.document(middle))[0]
            valid = finished and validator.is_valid(new_doc)
            old_uses = _uses(value_at(value, path))
            if old_uses:
                same = _uses(value_at(new_doc, path)) == old_uses
        except (ValueError, UserError):
            pass
        by_kind.setdefault(_cut_kind(path), []).append((exact, valid, same))
        progress()
    return _summary(by_kind, ("exact", "valid", "same_uses"))


def _summary(by_kind: dict, names: tuple) -> dict:
    """Shares per kind and overall; a None (not applicable) is left out of its share."""
    def shares(rows):  # "agree" is a mean count of tokens, the rest are shares
        out = {"count": len(rows)}
        for i, name in enumerate(names):
            vals = [r[i] for r in rows if r[i] is not None]
            out[name] = round(sum(vals) / len(vals), 4) if vals else None
            out[f"{name}_of"] = len(vals)
        return out
    result = {"all": shares([r for rows in by_kind.values() for r in rows])}
    result.update({k: shares(v) for k, v in sorted(by_kind.items())})
    return result


def eval_completion_main(args: argparse.Namespace) -> int:
    import jsonschema

    from trainframe.progress import Progress
    from trainframe.runs import load_run_model

    for flag, v in (("--cuts", args.cuts), ("--infills", args.infills)):
        if v < 0:
            raise UserError(f"{flag}: expected 0 or more, got {v}")
    for flag, v in (("--max-tokens", args.max_tokens), ("--batch-size", args.batch_size)):
        if v <= 0:
            raise UserError(f"{flag}: expected a positive integer, got {v}")
    if args.data is not None and not args.data.exists():
        raise UserError(f"--data: {args.data}: no such file or directory{relative_note(args.data)}")
    cfg, tokenizer, model = load_run_model(args.run_dir, args.checkpoint, args.device)
    _, data_cfg = cfg.component("data")
    if not (isinstance(tokenizer, SupportsInfill) and hasattr(data_cfg, "layout")):
        raise UserError(f"{args.run_dir}: not a workflow model (tokenizer {type(tokenizer).__name__})")
    with contextlib.redirect_stdout(sys.stderr):  # the dataset's log lines: stdout is for the result
        figures, docs = held_out(model, tokenizer, data_cfg, args.data, args.batch_size)
    result = {"run": str(args.run_dir), "data": str(args.data) if args.data else "validation repositories",
              "held_out": figures}
    validator = jsonschema.Draft7Validator(tokenizer.schema)
    layout = data_cfg.layout(tokenizer, model.config.context)
    rng = np.random.default_rng(args.seed)
    show = Progress(sys.stdout.isatty())
    task = show.task("completing", args.cuts + (args.infills if layout.fim else 0))
    step = lambda: show.update(task, advance=1)  # noqa: E731
    with show:
        result["completion"] = completion_scores(model, tokenizer, data_cfg.start_tokens(tokenizer), docs, validator,
                                                 args.cuts, args.max_tokens, rng, step)
        result["infill"] = (infill_scores(model, tokenizer, layout, docs, validator, args.infills,
                                          min(args.max_tokens, model.config.context // 2), rng, step)
                            if layout.fim else None)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    h = result["held_out"]
    skipped = f", {h['skipped']} skipped" if h["skipped"] is not None else ""
    print(f"{result['data']}: {h['documents']} workflows from {h['repositories']} repositories{skipped}, "
          f"{h['tokens']:,} target tokens")
    print(f"held-out loss {h['loss']:.4f}   perplexity {h['perplexity']:.3f}   bits per character {h['bpc']:.4f}")
    _table("completion", result["completion"], ("match16", "agree", "valid", "finished"))
    if result["infill"] is None:
        print("infill: - (the run was not trained with FIM)")
    else:
        _table("infill", result["infill"], ("exact", "valid", "same_uses"))
    return 0


def _table(title: str, block: dict, names: tuple) -> None:
    print(f"{title:<12}" + "".join(f"{n:>12}" for n in ("count",) + names))
    for kind, row in block.items():
        cells = ["-" if row[n] is None else f"{row[n]:.2f}" if n == "agree" else f"{row[n]:.1%} of {row[n + '_of']}"
                 for n in names]
        print(f"  {kind:<10}" + f"{row['count']:>12}" + "".join(f"{c:>12}" for c in cells))
