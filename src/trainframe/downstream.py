"""``trainframe eval PATH --tasks TASKS``: downstream scores from lm-evaluation-harness (``lm_eval``)
on the transformers form of a run or an export (docs/evals.md).

A run directory, or an export in the trainframe layout, is first written as a transformers export
(``trainframe export --format hf``) into a temporary directory; an hf export is read as it is.
lm_eval then scores it through its ``hf`` model (``HFLM``). For a run the scores are appended to its
metrics.jsonl as one row at the checkpoint's step, keys ``lm_eval/TASK/METRIC``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import math
import sys
import tempfile
from pathlib import Path

import yaml

from trainframe.errors import UserError
from trainframe.fileio import relative_note, writing

EXTRA_HINT = "pip install 'trainframe[eval]' (in a checkout: pip install -e '.[eval]')"


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        raise UserError(f"--tasks: needs lm-evaluation-harness with its transformers backend ({missing} is not "
                        f"installed): {EXTRA_HINT}") from None
    return lm_eval, HFLM, TaskManager


class _TaskLoader(yaml.SafeLoader):
    """Reads lm_eval task files, whose ``!function`` tags name Python code: kept as None."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _task_file_name(path: Path) -> str:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), _TaskLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"--tasks: {path}: cannot read the task file ({' '.join(str(e).split())[:160]})") from None
    name = data.get("task", data.get("group")) if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise UserError(f"--tasks: {path}: no `task:` name (an lm_eval task YAML names its task)")
    return name


def parse_tasks(spec: str, include: list[Path]) -> tuple[list[str], list[Path], bool]:
    """(task names, folders of task files to index, whether every task is a local file)."""
    names, folders, local = [], [], True
    for item in (t.strip() for t in spec.split(",")):
        if not item:
            continue
        if item.endswith((".yaml", ".yml")):
            path = Path(item).expanduser()
            if not path.is_file():
                raise UserError(f"--tasks: {item}: no such task file{relative_note(item)}")
            names.append(_task_file_name(path))
            folders.append(path.resolve().parent)
        else:
            names.append(item)
            local = False
    if not names:
        raise UserError("--tasks: expected lm_eval task names or task YAML files, comma-separated")
    for folder in include:
        if not folder.is_dir():
            raise UserError(f"--include-path: {folder}: no such directory{relative_note(folder)}")
        folders.append(folder.resolve())
        local = False  # names may come from there; keep lm_eval's own tasks too
    return names, list(dict.fromkeys(folders)), local


def _check_names(names: list[str], known: list[str]) -> None:
    known_set = set(known)
    for name in names:
        if name not in known_set:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"--tasks: unknown lm_eval task '{name}'{hint}; `lm_eval ls tasks` lists them, and a "
                            "task YAML file or --include-path DIR adds your own")


def _hf_dir(path: Path, which: str, stack: contextlib.ExitStack) -> tuple[Path, dict, Path | None]:
    """(a transformers export of ``path``, its checkpoint (file, step), the run dir or None)."""
    from trainframe.runs import load_run
    from trainframe.export import _read_manifest, is_export, load_export
    from trainframe.hf_export import write_hf

    if is_export(path):
        if which not in ("latest", None):
            raise UserError(f"--checkpoint: {path} is an export of a single checkpoint; leave --checkpoint out")
        manifest = _read_manifest(path)
        if manifest.get("layout") == "hf":
            return path, manifest["checkpoint"], None
        cfg, tokenizer, model = load_export(path)
        checkpoint, run_dir = manifest["checkpoint"], None
    else:
        cfg, tokenizer, model, ckpt_path, loop = load_run(path, which, "cpu")
        checkpoint, run_dir = {"file": ckpt_path.name, "step": loop.get("step")}, path
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trainframe-eval-"))) / "model"
    write_hf(tmp, cfg, tokenizer, model, checkpoint, Path(path).resolve().name, source=path)
    return tmp, checkpoint, run_dir


def scores(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm_eval's results ("acc,none" -> "acc"; another filter's
    metric keeps it: "exact_match,strict-match" -> "exact_match[strict-match]")."""
    out = {}
    for task, values in results.get("results", {}).items():
        row = {}
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            row[metric if filt == "none" else f"{metric}[{filt}]"] = float(value)
        out[task] = row
    return out


def append_metrics(run_dir: Path, step: int, row: dict) -> Path:
    """One metrics.jsonl row at ``step`` (the format of logging.JsonlLogger: non-finite -> null)."""
    from trainframe.logging import METRICS_FILE

    path = Path(run_dir) / METRICS_FILE
    line = json.dumps({"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                        for k, v in row.items()}})
    with writing(path, "the metrics"):
        lead = ""
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, 2)
                lead = "" if f.read(1) == b"\n" else "\n"  # a line cut by a kill stays on its own
        with open(path, "a", encoding="utf-8") as f:
            f.write(lead + line + "\n")
    return path


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def downstream_main(args) -> int:
    for flag, value in (("--packed", args.packed), ("--config", args.config), ("--batches", args.batches)):
        if value:
            raise UserError(f"{flag}: does not apply with --tasks (lm_eval reads each task's own data)")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UserError(f"--num-fewshot: expected an integer >= 0, got {args.num_fewshot}")
    limit = args.limit
    if limit is not None:
        if limit <= 0:
            raise UserError(f"--limit: expected a number of documents >= 1 or a fraction in (0, 1), got {limit}")
        limit = int(limit) if limit >= 1 else limit
    names, folders, local = parse_tasks(args.tasks, args.include_path or [])
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))  # lm_eval prints; stdout stays ours
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        manager = TaskManager(include_path=[str(f) for f in folders] or None, include_defaults=not local)
        _check_names(names, manager.all_tasks)
        hf_dir, checkpoint, run_dir = _hf_dir(args.path, args.checkpoint, stack)
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            lm = HFLM(pretrained=str(hf_dir), device=_device(args.device), batch_size=args.batch_size or 8,
                      dtype="float32")
            results = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=args.num_fewshot, limit=limit,
                                              task_manager=manager, log_samples=False)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a task's dataset, a metric, the harness: one line, not a trace
            text = " ".join(str(e).split()) or type(e).__name__
            raise UserError(f"--tasks: lm-evaluation-harness failed: {type(e).__name__}: {text[:240]}") from None
    table = scores(results or {})
    source = f"{checkpoint.get('file')}, step {checkpoint.get('step')}"
    row = {f"lm_eval/{task}/{metric}": value for task, metrics in table.items() for metric, value in metrics.items()}
    metrics_file = None
    if run_dir is not None and row:
        extra = {"lm_eval_checkpoint": checkpoint.get("file")}
        if limit is not None:
            extra["lm_eval_limit"] = limit
        if args.num_fewshot is not None:
            extra["lm_eval_num_fewshot"] = args.num_fewshot
        metrics_file = append_metrics(run_dir, checkpoint.get("step") or 0, {**row, **extra})
    if args.json:
        print(json.dumps({"path": str(args.path), "source": source, "step": checkpoint.get("step"),
                          "tasks": table, "metrics_file": str(metrics_file) if metrics_file else None}))
        return 0
    from importlib.metadata import version

    print(f"{args.path} ({source}): lm-evaluation-harness {version('lm_eval')}, {len(table)} task(s)"
          f"{f', limit {limit}' if limit is not None else ''}")
    width = max([len(t) for t in table] + [4])
    for task, metrics in table.items():
        for metric, value in metrics.items():
            if metric.endswith("_stderr") or "_stderr[" in metric:
                continue
            err = metrics.get(metric.replace("[", "_stderr[", 1) if "[" in metric else f"{metric}_stderr")
            plus = f" ± {err:.4f}" if isinstance(err, float) and math.isfinite(err) else ""
            print(f"  {task:<{width}}  {metric:<16} {value:.4f}{plus}")
    if metrics_file:
        print(f"appended to {metrics_file} (step {checkpoint.get('step')})")
    return 0
