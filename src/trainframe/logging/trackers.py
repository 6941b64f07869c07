"""Experiment trackers as loggers: ``wandb`` (Weights & Biases) and ``mlflow``.

Both are optional extras (``pip install 'trainframe[wandb]'``, ``'trainframe[mlflow]'``): their
packages are imported when a run starts, never by trainframe itself, so the core works without
them, and a config that names one without its package fails when the run is built, in one line
naming the extra. Like every logger they run on rank 0 only (``engine/build.py`` builds loggers
there alone).

What a tracker receives: the resolved run config once at the start (wandb: the run's config;
mlflow: flattened params plus ``config.yaml`` as an artifact), every metric row by step under the
tensorboard names (``train/loss``, ``val/val_loss``, ...), and each sample (wandb: a table of step,
prompt and text; mlflow: a text artifact ``samples/step_XXXXXXXX.txt``).

Resume. The tracker's run id and the last step logged per kind of row (train, val, sample) are kept
in the run directory (``wandb.json`` / ``mlflow.json``), written after every row the tracker took.
``trainframe resume`` continues the same tracker run and skips rows at steps the tracker already
has: a resumed run redoes the steps after its checkpoint, and a tracker, unlike metrics.jsonl
(``truncate_metrics``), cannot drop rows, so the rows of the first attempt stay (an exact resume
logs the same values for those steps).
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

import trainframe
from trainframe.config import ComponentConfig
from trainframe.errors import UserError
from trainframe.fileio import write_text_atomic

KINDS = ("train", "val", "sample")


def require(package: str, extra: str) -> None:
    """A missing tracker package is one line naming the pip extra (``_make`` prefixes the logger)."""
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"the {package} package is not installed: pip install 'trainframe[{extra}]'")


def scalars(metrics: dict, kind: str) -> dict[str, float]:
    """Finite numbers of a metric row of ``kind`` (trainframe_log's) under the tensorboard names
    (``train/loss``, ``val/val_loss``)."""
    group = row_kind(kind)
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        out[f"{group}/{key}"] = float(value)
    return out


def row_kind(kind: str) -> str:
    """The state file's name for trainframe_log's ``kind`` ("eval" rows are "val" there)."""
    return "val" if kind == "eval" else "train"


def flatten(data, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"trainer.max_steps": "1000", ...} (mlflow params are flat strings)."""
    if isinstance(data, dict) and data:
        out = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.dumps(data) if isinstance(data, list | dict) else str(data)}


class TrackerState:
    """The tracker's run id and the last step logged per kind of row, kept in the run directory."""

    def __init__(self, path: Path):
        self.path = path
        self.run_id: str | None = None
        self.logged = {kind: -1 for kind in KINDS}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.run_id = data.get("run_id")
                self.logged.update({k: int(v) for k, v in data.get("logged", {}).items() if k in KINDS})
            except (ValueError, TypeError, AttributeError, OSError):
                pass  # unreadable: start a new tracker run, as if there were none

    def has(self, kind: str, step: int) -> bool:
        return step <= self.logged[kind]

    def mark(self, kind: str, step: int) -> None:
        self.logged[kind] = step
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps({"run_id": self.run_id, "logged": self.logged}) + "\n",
                          "the tracker state")


class _Tracker:
    """What both trackers share: the state file, skipping rows the tracker has, the end status."""

    state_file = ""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.state: TrackerState | None = None
        self.failed = False

    def _start(self, trainer) -> None:
        raise NotImplementedError

    @trainframe.hookimpl
    def trainframe_fit_start(self, trainer):
        self.state = TrackerState(self.run_dir / self.state_file)
        self.failed = False
        self._start(trainer)
        self.state.save()

    def _take(self, kind: str, step: int) -> bool:
        """Whether a row of ``kind`` at ``step`` goes to the tracker (not before the run started,
        not at a step it already has)."""
        return self.state is not None and not self.state.has(kind, step)

    @trainframe.hookimpl
    def trainframe_exception(self, exception):
        self.failed = True


# ------------------------------------------------------------------------------------------ wandb

class WandbConfig(ComponentConfig):
    """Keys of ``loggers: [{name: wandb, ...}]``."""

    project: str | None = Field(None, description="wandb project; null = the run config's name")
    entity: str | None = Field(None, description="wandb team or user; null = your default entity")
    run_name: str | None = Field(None, description="display name of the run; null = the run directory's name")
    tags: list[str] = Field(default_factory=list, description="tags of the run")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online, offline (files only, `wandb sync` later) or disabled; "
        "null = WANDB_MODE, else online")


class WandbLogger(_Tracker):
    state_file = "wandb.json"

    def __init__(self, cfg: WandbConfig, run_dir: Path):
        super().__init__(run_dir)
        self.cfg = cfg
        self.run = None
        self.samples: list[list] = []

    def _start(self, trainer) -> None:
        import os

        import wandb

        cfg = self.cfg
        kwargs = {"project": cfg.project or trainer.config.name, "entity": cfg.entity,
                  "name": cfg.run_name or self.run_dir.resolve().name, "tags": cfg.tags or None,
                  "config": trainer.config.to_dict(), "resume": "allow"}
        if cfg.mode is not None:
            kwargs["mode"] = cfg.mode
        if self.state.run_id:
            kwargs["id"] = self.state.run_id  # continue the run this directory started
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(self.run_dir)  # wandb's files next to the run's own, under RUN_DIR/wandb/
        try:
            self.run = wandb.init(**kwargs)
        except Exception as e:  # not logged in, no network, a bad entity: one line, exit 2
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"logger 'wandb': could not start a run: {first} "
                            "(`wandb login`, or loggers.N.mode: offline)") from None
        if self.state.run_id:
            self.run.config.update(trainer.config.to_dict(), allow_val_change=True)  # e.g. a raised max_steps
        self.state.run_id = self.run.id

    @trainframe.hookimpl
    def trainframe_log(self, step, metrics, kind):
        row = row_kind(kind)
        if self.run is None or not self._take(row, step):
            return
        self.run.log(scalars(metrics, kind), step=step)
        self.state.mark(row, step)

    @trainframe.hookimpl
    def trainframe_sample(self, step, prompt, text):
        if self.run is None or not self._take("sample", step):
            return
        import wandb

        self.samples.append([step, prompt, text])
        self.run.log({"samples": wandb.Table(columns=["step", "prompt", "text"], data=list(self.samples))},
                     step=step)
        self.state.mark("sample", step)

    @trainframe.hookimpl
    def trainframe_fit_end(self):
        if self.run is not None:
            self.run.finish(exit_code=1 if self.failed else 0)
            self.run = None


def build_wandb(cfg: WandbConfig, *, run_dir: Path):
    require("wandb", "wandb")
    return WandbLogger(cfg, run_dir)


# ----------------------------------------------------------------------------------------- mlflow

class MlflowConfig(ComponentConfig):
    """Keys of ``loggers: [{name: mlflow, ...}]``."""

    experiment: str | None = Field(
        None, description="mlflow experiment (made if missing); null = the run config's name")
    run_name: str | None = Field(None, description="name of the mlflow run; null = the run directory's name")
    tags: dict[str, str] = Field(default_factory=dict, description="tags of the run, name: value")
    tracking_uri: str | None = Field(
        None, description="tracking server or store (http://..., file:DIR, sqlite:///FILE); "
        "null = MLFLOW_TRACKING_URI, else mlflow's default")


class MlflowLogger(_Tracker):
    state_file = "mlflow.json"
    PARAM_LIMIT = 6000  # characters of one param value mlflow stores

    def __init__(self, cfg: MlflowConfig, run_dir: Path):
        super().__init__(run_dir)
        self.cfg = cfg
        self.client = None
        self.run_id: str | None = None

    def _start(self, trainer) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        cfg = self.cfg
        where = cfg.tracking_uri or "the default tracking URI"
        try:
            self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
            run = None
            if self.state.run_id:
                try:
                    run = self.client.get_run(self.state.run_id)
                except Exception:  # gone, or another tracking store now: a new run, said in one line
                    print(f"trainframe: mlflow run {self.state.run_id} not found at {where}; starting a new one")
            if run is None:
                name = cfg.experiment or trainer.config.name
                experiment = self.client.get_experiment_by_name(name)
                experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
                run = self.client.create_run(experiment_id, run_name=cfg.run_name or self.run_dir.resolve().name,
                                             tags=dict(cfg.tags))
                params = [Param(k, v[: self.PARAM_LIMIT]) for k, v in flatten(trainer.config.to_dict()).items()]
                for i in range(0, len(params), 100):  # log_batch takes at most 100 params
                    self.client.log_batch(run.info.run_id, params=params[i:i + 100])
            else:
                self.client.update_run(run.info.run_id, status="RUNNING")
            self.run_id = run.info.run_id
            # The resolved config, rewritten on resume (params cannot change; a raised max_steps shows here).
            self.client.log_text(self.run_id, trainer.config.to_yaml(), "config.yaml")
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"logger 'mlflow': could not start a run at {where}: {first}") from None
        self.state.run_id = self.run_id

    @trainframe.hookimpl
    def trainframe_log(self, step, metrics, kind):
        row = row_kind(kind)
        if self.run_id is None or not self._take(row, step):
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(key, value, now, step) for key, value in scalars(metrics, kind).items()]
        if rows:
            self.client.log_batch(self.run_id, metrics=rows)
        self.state.mark(row, step)

    @trainframe.hookimpl
    def trainframe_sample(self, step, prompt, text):
        if self.run_id is None or not self._take("sample", step):
            return
        self.client.log_text(self.run_id, f"{prompt}{text}\n", f"samples/step_{step:08d}.txt")
        self.state.mark("sample", step)

    @trainframe.hookimpl
    def trainframe_fit_end(self, trainer):
        if self.run_id is not None:
            status = "FAILED" if self.failed else ("KILLED" if trainer.stop_reason == "interrupted" else "FINISHED")
            self.client.set_terminated(self.run_id, status=status)
            self.run_id = None


def build_mlflow(cfg: MlflowConfig, *, run_dir: Path):
    require("mlflow", "mlflow")
    return MlflowLogger(cfg, run_dir)
