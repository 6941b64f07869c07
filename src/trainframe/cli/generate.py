"""``trainframe generate RUN_DIR``: sample documents from a trained run, printed or one file each."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

from trainframe.errors import UserError
from trainframe.fileio import atomic_dir
from trainframe.sampling import sample_documents
from trainframe.progress import Progress
from trainframe.protocols import (SupportsAllowedNext, SupportsBudgetLimited, SupportsCompleteTyped,
                                  SupportsDecodeFile, SupportsInfill)
from trainframe.runs import load_run_model


def generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory")
    p.add_argument("--prompt", default=None,
                   help="text to continue (default: a new document; a newline for text tokenizers)")
    p.add_argument("--prefix-from", type=Path, metavar="FILE",
                   help="complete the document this file begins, as typed so far (it need not parse: the "
                        "longest run of leading lines the tokenizer can continue is kept; constrained); "
                        "with --prefix-tokens, continue the whole file's first K tokens instead")
    p.add_argument("--prefix-tokens", type=int, default=None, metavar="K",
                   help="how many tokens of --prefix-from's encoding to keep")
    p.add_argument("--infill", type=Path, metavar="FILE",
                   help="regenerate the value at --at in this document from everything before and after it "
                        "(a run trained with fill-in-the-middle; constrained: the document stays valid)")
    p.add_argument("--at", metavar="PATH", help="with --infill: where, e.g. jobs.build.steps[2] or jobs.test")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=1, help="number of samples (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="samples drawn at once (default 16)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write one file per sample into DIR, plus samples.jsonl, instead of printing")
    p.add_argument("--constrained", action="store_true",
                   help="sample only tokens the tokenizer's allowed_next permits (schema-valid output)")
    p.add_argument("--max-tokens", type=int, default=200, help="new tokens per sample at most (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the K likeliest tokens; 0 = all (default 50)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep tokens up to this mass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="latest", help="best, latest or a step number")
    p.add_argument("--device", default="auto")


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{flag}: {path}: cannot read: {e}") from None


def _prompt(args: argparse.Namespace, tokenizer) -> tuple[list[int], str]:
    """(prompt ids, prompt text to print before the sample; None: decode the prompt ids with it)."""
    if args.prefix_from is not None:
        text = _read_text(args.prefix_from, "--prefix-from")
        try:
            ids = list(tokenizer.encode(text))
        except ValueError as e:
            raise UserError(f"--prefix-from: {args.prefix_from}: the tokenizer rejects it: {e}") from None
        return ids[: args.prefix_tokens] if args.prefix_tokens is not None else ids, None
    if args.prompt is not None:
        try:
            return list(tokenizer.encode(args.prompt)), args.prompt
        except ValueError as e:
            raise UserError(f"--prompt: the tokenizer rejects it: {e}") from None
    return [], ""


def _render(tokenizer, ids: list[int], prompt_text: str | None, new: list[int]) -> tuple[str, str]:
    """(file text, suffix): the tokenizer's ``decode_file`` when it has one, else decoded text."""
    if isinstance(tokenizer, SupportsDecodeFile):
        return tokenizer.decode_file(ids)
    if prompt_text is None:
        return tokenizer.decode(ids), ".txt"
    return prompt_text + tokenizer.decode(new), ".txt"


def generate_main(args: argparse.Namespace) -> int:
    for flag, value in (("--max-tokens", args.max_tokens), ("--n", args.n), ("--batch-size", args.batch_size)):
        if value <= 0:
            raise UserError(f"{flag}: expected a positive integer, got {value}")
    if not 0 <= args.temperature < math.inf:  # NaN too
        raise UserError(f"--temperature: expected a number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k: expected an integer >= 0 (0 = every token), got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p: expected a number > 0 and <= 1, got {args.top_p}")
    if args.prefix_tokens is not None and (args.prefix_from is None or args.prefix_tokens <= 0):
        raise UserError("--prefix-tokens: expected a positive integer, together with --prefix-from")
    if args.prefix_from is not None and args.prompt is not None:
        raise UserError("--prompt and --prefix-from: give one of them")
    if args.out is not None and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"--out: {args.out} exists and is not an empty directory; choose a new one")
    if (args.infill is None) != (args.at is None):
        raise UserError("--infill and --at: give both (the document, and the path of the value to regenerate)")
    if args.infill is not None and (args.prefix_from is not None or args.prompt is not None):
        raise UserError("--infill: leave out --prompt and --prefix-from")
    cfg, tokenizer, model = load_run_model(args.run_dir, args.checkpoint, args.device)
    _, data_cfg = cfg.component("data")
    start = list(data_cfg.start_tokens(tokenizer)) if hasattr(data_cfg, "start_tokens") else []
    infill = allowed_new = None
    if args.infill is not None:
        if not (isinstance(tokenizer, SupportsInfill) and hasattr(data_cfg, "layout")):
            raise UserError(f"--infill: the run's tokenizer {type(tokenizer).__name__} and dataset cannot fill in "
                            "the middle")
        infill = tokenizer.infill(_read_text(args.infill, "--infill"), args.at,
                                  data_cfg.layout(tokenizer, model.config.context), args.max_tokens)
        start, prompt, prompt_text, allowed_new = infill.prompt, [], None, infill.allowed
    elif args.prefix_from is not None and args.prefix_tokens is None and isinstance(tokenizer, SupportsCompleteTyped):
        typed = tokenizer.complete_typed(_read_text(args.prefix_from, "--prefix-from"))
        print(f"completing {args.prefix_from} from its first {typed.lines} of {len(typed.text.splitlines())} "
              f"lines ({len(typed.prompt)} tokens)", file=sys.stderr)
        prompt, prompt_text = typed.prompt, None
        if typed.min_tokens() > args.max_tokens:
            raise UserError(f"--max-tokens: {args.max_tokens} is too few: the shortest completion of "
                            f"{args.prefix_from} takes {typed.min_tokens()} tokens, its end token included")
        allowed_new = lambda new: typed.allowed(new, args.max_tokens - 1 - len(new))  # noqa: E731
    else:
        prompt, prompt_text = _prompt(args, tokenizer)
    if allowed_new is not None:
        args.constrained = True  # a completion or an infill must come back as a valid document
    if not start and not prompt:  # a text model: continue a newline, as before
        prompt_text = "\n"
        prompt = list(tokenizer.encode(prompt_text)) or [tokenizer.eos_id]
    show = Progress(args.out is not None and sys.stdout.isatty())  # samples printed to stdout: no bar there
    task = show.task("sampling", args.n)
    rows = []
    samples = sample_documents(model, tokenizer, start, prompt, args.n, max_tokens=args.max_tokens,
                               batch_size=args.batch_size, constrained=args.constrained,
                               temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                               seed=args.seed, progress=lambda n: show.update(task, advance=n),
                               allowed_new=allowed_new)
    # --out appears whole, with samples.jsonl, or not at all
    with (atomic_dir(args.out, "the samples") if args.out is not None else contextlib.nullcontext()) as folder:
        with show:
            for i, (new, finished) in enumerate(samples, 1):
                if infill is not None:  # the middle goes back into the document
                    new = infill.document(new)
                row = {"sample": i, "file": None, "tokens": len(prompt) + len(new), "prompt_tokens": len(prompt),
                       "finished": finished, "error": None}
                if args.constrained and allowed_new is None and isinstance(tokenizer, SupportsBudgetLimited):
                    row["budget_closed"] = tokenizer.budget_limited(prompt, new, args.max_tokens - 1)
                try:
                    text, suffix = _render(tokenizer, prompt + new, prompt_text, new)
                except ValueError as e:
                    row["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
                    text = suffix = None
                if folder is None:
                    if args.n > 1 or row["error"]:
                        print(f"--- sample {i}" + (f": does not decode: {row['error']}" if row["error"] else ""))
                    if text is not None:
                        print(text)
                    continue
                if text is not None:
                    row["file"] = f"sample_{i:04d}{suffix}"
                    (folder / row["file"]).write_text(text, encoding="utf-8")
                rows.append(row)
        if folder is not None:
            (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if args.out is not None:
        decoded = sum(r["file"] is not None for r in rows)
        closed = sum(bool(r.get("budget_closed")) for r in rows)
        print(f"{len(rows)} samples, {decoded} decoded, {sum(r['finished'] for r in rows)} finished"
              + (f" ({closed} closed early to fit --max-tokens)" if closed else "") + f"; written to {args.out}")
        if decoded < len(rows):
            fix = ("sample with --constrained (only tokens that keep the document valid) or raise --max-tokens"
                   if isinstance(tokenizer, SupportsAllowedNext) and not args.constrained else "raise --max-tokens")
            print(f"trainframe: {len(rows) - decoded} of {len(rows)} samples do not decode (samples.jsonl says "
                  f"why): {fix}", file=sys.stderr)
    return 0
