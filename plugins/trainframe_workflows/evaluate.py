"""``trainframe eval-workflows``: how many generated workflows are usable."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

from trainframe.errors import UserError

from .corpus import dir_files
from .schema_tokenizer import SchemaNotFound, load_schema
from .schema_tokenizer.yaml_loader import load_document

ROWS = [  # (key, label) in table order
    ("count", "samples"),
    ("finished", "finished"),
    ("budget_closed", "closed by budget"),
    ("decoded", "decoded"),
    ("yaml_valid", "valid YAML"),
    ("schema_valid", "schema-valid"),
    ("has_on_and_jobs", "has on + jobs"),
    ("distinct", "distinct"),
    ("mean_tokens", "mean tokens"),
    ("actionlint_clean", "actionlint clean"),
    ("actionlint_findings", "actionlint findings"),
    ("actionlint_crashed", "actionlint crashed"),
]


def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                   help="directories of workflows, e.g. from `trainframe generate --out DIR`; several are compared side by side")
    p.add_argument("--json", action="store_true", help="print JSON: one object (one DIR) or one per DIR keyed by DIR")
    p.add_argument("--schema", default="github-workflow", help="schema to validate against (default: github-workflow)")
    p.add_argument("--no-actionlint", action="store_true", help="skip actionlint even when it is installed")


def _samples(d: Path) -> tuple[list[Path], list[dict] | None]:
    """(workflow files, samples.jsonl rows or None)."""
    if not d.is_dir():
        raise UserError(f"{d}: not a directory; expected a directory of generated workflows")
    manifest = d / "samples.jsonl"
    rows = None
    if manifest.exists():
        try:
            rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        except ValueError as e:
            raise UserError(f"{manifest}: not JSON lines: {e}") from None
        files = [d / r["file"] for r in rows if r.get("file")]
    else:
        files = dir_files(d)  # subdirectories too, as the training corpus reader does
    if not files and not rows:
        raise UserError(f"{d}: no samples.jsonl and no .yml/.yaml/.json files")
    return files, rows


def actionlint_findings(files: list[Path]) -> dict[Path, int | None] | None:
    """Findings per file (None for a file actionlint itself crashed on), or None when actionlint
    is not installed."""
    exe = shutil.which("actionlint")
    if exe is None or not files:
        return None
    found: dict[Path, int | None] = {f: 0 for f in files}
    for i in range(0, len(files), 200):
        batch = files[i: i + 200]
        errors = _lint(exe, batch)
        if errors is None:  # actionlint crashed on some file of the batch: lint them one by one
            for f in batch:
                one = _lint(exe, [f])
                if one is None:
                    found[f] = None
                else:
                    found[f] = len(one)
            continue
        for err in errors:
            path = Path(err["filepath"])
            key = next((f for f in batch if f == path or f.resolve() == path.resolve()), None)
            if key is not None:
                found[key] += 1
    return found


def _lint(exe: str, files: list[Path]) -> list[dict] | None:
    """actionlint's findings for ``files``; None when it fails (exit status other than 0 or 1)."""
    proc = subprocess.run([exe, "-no-color", "-format", "{{json .}}", *map(str, files)],
                          check=False, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1 = findings; anything else = actionlint itself failed
        return None
    return json.loads(proc.stdout or "[]")


def evaluate_dir(d: Path, validator, use_actionlint: bool = True) -> dict:
    files, rows = _samples(d)
    count = len(rows) if rows is not None else len(files)
    docs, yaml_ok, schema_ok, on_jobs = set(), 0, 0, 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        try:
            value = load_document(text)
        except ValueError:
            docs.add(text)
            continue
        if isinstance(value, dict):
            yaml_ok += 1
            on_jobs += "on" in value and "jobs" in value
        schema_ok += validator.is_valid(value)
        docs.add(json.dumps(value, sort_keys=True))
    tokens = [r["tokens"] for r in rows] if rows is not None else []
    result = {
        "dir": str(d), "count": count, "decoded": len(files), "yaml_valid": yaml_ok, "schema_valid": schema_ok,
        "has_on_and_jobs": on_jobs, "distinct": len(docs),
        "mean_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None,
        "finished": sum(bool(r.get("finished")) for r in rows) if rows is not None else None,
        "budget_closed": sum(bool(r.get("budget_closed")) for r in rows) if rows is not None else None,
        "actionlint_clean": None, "actionlint_findings": None, "actionlint_crashed": None,
    }
    lint = actionlint_findings(files) if use_actionlint else None
    if lint is not None:
        result["actionlint_clean"] = sum(n == 0 for n in lint.values())
        result["actionlint_findings"] = sum(n for n in lint.values() if n is not None)
        result["actionlint_crashed"] = sum(n is None for n in lint.values())
    return result


def _cell(key: str, r: dict) -> str:
    v = r[key]
    if v is None:
        return "-"
    if key in ("count", "mean_tokens", "actionlint_findings", "actionlint_crashed") or not r["count"]:
        return str(v)
    return f"{v} ({100 * v / r['count']:.0f}%)"


def eval_main(args: argparse.Namespace) -> int:
    import jsonschema

    try:
        _, schema = load_schema(args.schema)
    except SchemaNotFound as e:
        raise UserError(f"--schema: {e}") from None
    validator = jsonschema.Draft7Validator(schema)
    results = [evaluate_dir(d, validator, not args.no_actionlint) for d in args.dirs]
    if args.json:
        out = results[0] if len(results) == 1 else {r["dir"]: r for r in results}
        print(json.dumps(out, indent=1))
        return 0
    names = [r["dir"] for r in results]
    width = max(len(label) for _, label in ROWS)
    cols = [max(len(n), 14) for n in names]
    print(f"{'':{width}}  " + "  ".join(f"{n:>{c}}" for n, c in zip(names, cols)))
    for key, label in ROWS:
        print(f"{label:{width}}  " + "  ".join(f"{_cell(key, r):>{c}}" for r, c in zip(results, cols)))
    if shutil.which("actionlint") is None and not args.no_actionlint:
        print("(actionlint is not installed: no lint figures)")
    return 0
