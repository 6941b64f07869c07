"""Bad input across the commands, as one table: every case exits with one line naming what is wrong
and where (or, for the few that succeed despite something odd, says what it did), changes none of
its input files and leaves nothing behind but its expected outputs.

A case is ``Case(name, argv, files, code, message, ...)``:

- ``argv``: the command line (a string split like a shell does, or a list); ``$RUN``, ``$EXPORT``
  and ``$TEXT`` stand for the shared tiny run, an export of it and Tiny Shakespeare (a plugin's
  table adds its own, e.g. ``$WRUN``, the workflow run).
- ``files``: what the case needs in its (fresh, current) directory, in order: text (``$`` names
  filled in), bytes, ``DIR`` (an empty folder) or ``Copy(path)`` (a copy of a file or folder).
- ``code``: the exit status (argparse's SystemExit counts as its code).
- ``message``: a substring of, or else a regex searched in, the message line: the first line of
  stderr (``line`` picks another: -1 the last, None any), or for argparse's errors the line with ``error:``.
  ``""`` matches an empty stderr.
- ``outputs``: globs (relative, ``*`` crosses folders) of the new paths the case may leave.
- ``stdout``: a regex searched in stdout, or ``JSON``: stdout is exactly one JSON value.
- ``read_only`` / ``full``: folders where writing is refused (EACCES) / the disk is full (ENOSPC),
  both simulated in this process (root ignores permissions); ``read_only`` folders are created.

To add a case, append a ``Case`` to ``CASES``. The first-party plugins' commands and components
have tables of their own on the same harness (``run_case``): tests/text/test_text_bad_input.py,
tests/workflows/test_workflows_bad_input.py, tests/hybrid/test_hybrid_bad_input.py.
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import hashlib
import io
import json
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from support import SHAKESPEARE, TINY_YAML

from trainframe.cli import main

DIR = object()  # an empty folder
JSON = object()  # stdout is one JSON value


class Copy(NamedTuple):
    source: str  # a path, $-names filled in


class Case(NamedTuple):
    name: str
    argv: str | list
    files: dict
    code: int
    message: str
    outputs: tuple = ()
    stdout: str | object | None = None
    read_only: tuple = ()
    full: tuple = ()
    line: int | None = 0  # the stderr line to match: -1 where log lines come first; None: any line


# A tiny run's config with one thing changed (extends: the error must name the child file).
TINY = {"tiny.yaml": TINY_YAML}


def child(body: str, name: str = "x.yaml") -> dict:
    return {**TINY, name: "extends: tiny.yaml\n" + body}


def ids(tokens, dtype=np.uint16) -> bytes:
    return np.asarray(tokens, dtype=dtype).tobytes()


SHARDS = {  # a `tokens` shard directory whose ids are all 300: past the byte tokenizer's 258
    "shards/index.json": '{"dtype": "uint16", "shards": [{"file": "a.bin", "tokens": 200}]}',
    "shards/a.bin": ids([300] * 200),
}
ZERO_NEWEST = {"r": Copy("$RUN"), "r/checkpoints/step_00000006.pt": b""}  # a save cut to nothing
NOT_UTF8 = b"name: x\n# caf\xe9\n"  # Latin-1
METRICS = '{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n'


CASES = [
    # ------------------------------------------------------------------------- config, plugins, CLI
    Case("no command", "", {}, 2, ""),
    Case("unknown command", "bogus", {}, 2, "invalid choice: 'bogus'"),
    Case("config without subcommand", "config", {}, 2, "required: COMMAND"),
    Case("unknown option", "plugins --bogus", {}, 2, "unrecognized arguments: --bogus"),
    Case("config valid", "config validate tiny.yaml", TINY, 0, "", stdout="tiny.yaml: valid"),
    Case("config missing", "config show nothere.yaml", {}, 2,
         r"^nothere\.yaml: config file not found \(relative to the current directory /"),
    Case("config absolute missing", "config show /nonexistent/x.yaml", {}, 2, "/nonexistent/x.yaml: config file not found$"),
    Case("config invalid yaml", "config show x.yaml", {"x.yaml": "a: [1\n"}, 2, "x.yaml: invalid YAML (line 2, column 1)"),
    Case("config not a mapping", "config show x.yaml", {"x.yaml": "[1, 2]\n"}, 2,
         "x.yaml: expected a mapping of config keys at the top, got list"),
    Case("config not utf-8", "config show x.yaml", {"x.yaml": NOT_UTF8}, 2, "x.yaml: not UTF-8 text (byte 13)"),
    Case("config a directory", "config show x.yaml", {"x.yaml": DIR}, 2, "x.yaml: cannot read config"),
    Case("loggers null", "config show x.yaml", child("loggers: null\n"), 2,
         "x.yaml: loggers: expected a list of mappings with a 'name' key ([] for none), got null"),
    Case("callbacks a mapping", "config show x.yaml", child("callbacks: {name: foo}\n"), 2,
         "x.yaml: callbacks: expected a list of mappings with a 'name' key ([] for none), got {name: foo}"),
    Case("loggers a string", "config show tiny.yaml loggers=jsonl", TINY, 2,
         "command line: loggers: expected a list of mappings"),
    Case("lr inf in file", "config show x.yaml", child("optim: {lr: .inf}\n"), 2,
         "x.yaml: optim.lr: expected a finite number > 0, got inf"),
    Case("lr inf override", "config show tiny.yaml optim.lr=.inf", TINY, 2,
         "command line: optim.lr: expected a finite number > 0, got inf"),
    Case("lr nan override", "config show tiny.yaml optim.lr=.nan", TINY, 2, "command line: optim.lr: expected a finite number"),
    Case("grad clip inf", "config show tiny.yaml trainer.grad_clip=.inf", TINY, 2,
         "command line: trainer.grad_clip: expected a finite number > 0, got inf"),
    Case("bucket size -inf", "config show tiny.yaml trainer.ddp_bucket_mb=-.inf", TINY, 2,
         "trainer.ddp_bucket_mb: expected a finite number > 0, got -inf"),
    Case("betas inf", "config show tiny.yaml optim.betas=[.inf,0.9]", TINY, 2,
         "command line: optim.betas.0: expected a finite number >= 0 and < 1, got inf"),
    Case("dropout nan", "config show tiny.yaml model.dropout=.nan", TINY, 2, "command line: model.dropout: expected a finite"),
    Case("min lr ratio nan", "config show tiny.yaml schedule.min_lr_ratio=.nan", TINY, 2,
         "schedule.min_lr_ratio: expected a finite number"),
    Case("child key blamed on the child", "config show x.yaml", child("optim: {lr: -1}\n"), 2,
         "x.yaml: optim.lr: expected a number > 0, got -1"),
    Case("section error blamed on the child", "config show x.yaml", child("model: {n_head: 5}\n"), 2,
         "x.yaml: model.n_head: d_model (32) must be divisible by n_head (5)"),
    Case("second parent does not take the first's key", "config show x.yaml",
         {**TINY, "p1.yaml": "optim: {lr: -1}\n", "p2.yaml": "optim: {betas: [0.9, 0.95]}\n",
          "x.yaml": "extends: [tiny.yaml, p1.yaml, p2.yaml]\n"}, 2, "p1.yaml: optim.lr: expected a number > 0, got -1"),
    Case("grandparent key blamed on the grandparent", "config show x.yaml",
         {**TINY, "g.yaml": "trainer: {log_every: 0}\n", "p.yaml": "extends: g.yaml\ntrainer: {max_steps: 3}\n",
          "x.yaml": "extends: [tiny.yaml, p.yaml]\n"}, 2, "g.yaml: trainer.log_every: expected an integer > 0, got 0"),
    Case("section override blamed on the command line", ["config", "show", "tiny.yaml", "optim={lr: -1}"], TINY, 2,
         "command line: optim.lr: expected a number > 0, got -1"),
    Case("override section error", "config show x.yaml model.d_model=33", child("model: {n_head: 5}\n"), 2,
         "command line: model.d_model: d_model (33) must be divisible by n_head (5)"),
    Case("section override without name keeps the component", ["config", "show", "tiny.yaml", "optim={eps: 1.0e-6}"],
         TINY, 0, "", stdout=r"optim:\n  name: adamw\n  lr: 0.003\n"),
    Case("tuple item bounds", "config show tiny.yaml optim.betas=[0.9,1.5]", TINY, 2,
         "command line: optim.betas.1: expected a number >= 0 and < 1, got 1.5"),
    Case("override without =", "config show tiny.yaml trainer", TINY, 2, "override 'trainer': expected KEY.PATH=VALUE"),
    Case("override empty key", "config show tiny.yaml trainer..max_steps=3", TINY, 2, "empty key in 'trainer..max_steps'"),
    Case("override list index", "config show tiny.yaml loggers.5.name=x", TINY, 2, "loggers.5: no list item 5"),
    Case("override unknown key", "config show tiny.yaml trainer.max_step=3", TINY, 2,
         "command line: trainer.max_step: unknown key (did you mean 'max_steps'?)"),
    Case("unknown top key", "config show x.yaml", child("seeed: 3\n"), 2, "x.yaml: seeed: unknown key (did you mean 'seed'?)"),
    Case("unknown optimizer", "config show tiny.yaml optim.name=sgd", TINY, 2, "command line: optim.name: unknown optimizer 'sgd'"),
    Case("section not a mapping", "config show tiny.yaml data=tiny", TINY, 2,
         "command line: data: expected a mapping with a 'name' key, got 'tiny'"),
    Case("missing section", "config show x.yaml", {"x.yaml": "tokenizer: {name: bytes}\n"}, 2, ": model: required"),
    Case("precision literal", "config show tiny.yaml trainer.precision=fp16", TINY, 2, "expected one of 'auto', 'fp32' or 'bf16'"),
    Case("extends missing", "config show x.yaml", {"x.yaml": "extends: base.yaml\n"}, 2, "x.yaml: extends: file not found"),
    Case("extends circular", "config show x.yaml", {"x.yaml": "extends: y.yaml\n", "y.yaml": "extends: x.yaml\n"}, 2,
         "extends: circular chain"),
    Case("extends a number", "config show x.yaml", {"x.yaml": "extends: 5\n"}, 2, "extends: expected a path or a list of paths"),
    Case("extends parent not utf-8", "config show x.yaml", {"p.yaml": NOT_UTF8, "x.yaml": "extends: p.yaml\n"}, 2,
         "p.yaml: not UTF-8 text"),

    # ------------------------------------------------------------------------------------- train
    Case("train missing config", "train nothere.yaml", {}, 2, "nothere.yaml: config file not found"),
    Case("train nproc 0", "train tiny.yaml --nproc 0", TINY, 2, "--nproc: expected a positive integer, got 0"),
    Case("train lr inf", "train tiny.yaml optim.lr=.inf --run-dir r", TINY, 2, "command line: optim.lr: expected a finite"),
    Case("train data missing, relative", "train tiny.yaml data.path=corpus.txt --run-dir r", TINY, 2,
         r"data.path: no file matches 'corpus.txt' \(relative to the current directory /"),
    Case("train data a folder", "train tiny.yaml data.path=d --run-dir r", {**TINY, "d": DIR}, 2,
         "data.path: 'd' is not a file"),
    Case("train data not utf-8", "train tiny.yaml data.path=latin.txt --run-dir r", {**TINY, "latin.txt": b"caf\xe9 " * 50},
         2, "latin.txt: not UTF-8 text (byte 3)"),
    Case("train data too short", "train tiny.yaml data.path=short.txt --run-dir r", {**TINY, "short.txt": "hi"}, 2,
         "too few for one training window"),
    Case("train tokens out of vocab", "train x.yaml --run-dir r", {**child("data: {name: tokens, path: shards}\n"), **SHARDS},
         2, "data.path: shards: the shards hold token id 300, but the tokenizer has only 258 ids"),
    Case("train tokens max_id recorded", "train x.yaml --run-dir r",
         {**child("data: {name: tokens, path: shards}\n"), **SHARDS,
          "shards/index.json": '{"dtype": "uint16", "max_id": 999, "shards": [{"file": "a.bin", "tokens": 200}]}'},
         2, "the shards hold token id 999"),
    Case("train tokens index vocab", "train x.yaml --run-dir r",
         {**child("data: {name: tokens, path: shards}\n"), **SHARDS,
          "shards/index.json": '{"dtype": "uint16", "vocab_size": 512, "shards": [{"file": "a.bin", "tokens": 200}]}'},
         2, "shards use vocab 512, the tokenizer has 258"),
    Case("train tokens missing dir", "train x.yaml --run-dir r", child("data: {name: tokens, path: shards}\n"), 2,
         r"shards: not a token shard directory \(no index.json\) \(relative to the current directory"),
    Case("train tokens malformed index", "train x.yaml --run-dir r",
         {**child("data: {name: tokens, path: shards}\n"), "shards/index.json": "{}"}, 2, "malformed shard index"),
    Case("train tokens short shard", "train x.yaml --run-dir r",
         {**child("data: {name: tokens, path: shards}\n"), **SHARDS, "shards/a.bin": ids([1] * 10)}, 2,
         "a.bin: holds 10 tokens, index says 200"),
    Case("train tokens shard missing", "train x.yaml --run-dir r",
         {**child("data: {name: tokens, path: shards}\n"), "shards/index.json": SHARDS["shards/index.json"]}, 2,
         "shard file missing"),
    Case("train model vocab too small", "train tiny.yaml model.vocab_size=100 --run-dir r", TINY, 2,
         "model vocab_size (100) is smaller than the tokenizer's (258)"),
    Case("train no cuda", "train tiny.yaml trainer.device=cuda --run-dir r", TINY, 2, "CUDA is not available"),
    Case("train bad device", "train tiny.yaml trainer.device=tpu --run-dir r", TINY, 2, "trainer.device: expected auto"),
    Case("train heads", "train tiny.yaml model.n_head=5 --run-dir r", TINY, 2, "must be divisible by n_head (5)"),
    Case("train run dir is a file", "train tiny.yaml --run-dir f", {**TINY, "f": "x"}, 2, "f: "),
    Case("train into a run", "train tiny.yaml --run-dir $RUN", TINY, 2, "already holds a run"),
    Case("train run dir read-only", "train tiny.yaml --run-dir ro/r", TINY, 2, "ro/r", read_only=("ro",)),
    Case("train token cache read-only", "train tiny.yaml data.path=small.txt data.cache_dir=ro --run-dir r",
         {**TINY, "small.txt": "To be, or not to be: that is the question. " * 4}, 2,
         "cannot write token shards: Permission denied", read_only=("ro",)),
    Case("train disk full at the checkpoint",
         "train tiny.yaml trainer.max_steps=1 trainer.eval_batches=1 --run-dir r", TINY, 2,
         r"r/checkpoints/best.pt: no space left on the device while writing the checkpoint \(needs about "
         r"[\d.]+ MB, [\d,.]+ MB free there\)", outputs=("r", "r/*"), full=("r/checkpoints",)),
    Case("train disk full in the token cache", "train tiny.yaml data.path=small.txt data.cache_dir=c --run-dir r",
         {**TINY, "small.txt": "Now is the winter of our discontent. " * 4}, 2,
         "no space left on the device while writing token shards (needs about", outputs=("c", "c/*"), full=("c",)),

    # ------------------------------------------------------------------------------------ resume
    Case("resume not a run", "resume nowhere", {}, 2, "nowhere: not a run directory (no config.yaml)"),
    Case("resume nproc 0", "resume $RUN --nproc 0", {}, 2, "--nproc: expected a positive integer, got 0"),
    Case("resume config not utf-8", "resume r", {"r": Copy("$RUN"), "r/config.yaml": NOT_UTF8}, 2,
         "r/config.yaml: not UTF-8 text"),
    Case("resume bad override", "resume r trainer.max_steps=0", {"r": Copy("$RUN")}, 2,
         "command line: trainer.max_steps: expected an integer > 0, got 0"),
    Case("resume lr inf", "resume r optim.lr=.inf", {"r": Copy("$RUN")}, 2, "command line: optim.lr: expected a finite"),

    # -------------------------------------------------------------------------------------- eval
    Case("eval not a run", "eval nowhere", {}, 2, "nowhere: not a run directory (no config.yaml)"),
    Case("eval batches 0", "eval $RUN --batches 0", {}, 2, "--batches: expected a positive integer, got 0"),
    Case("eval batch size -1", "eval $RUN --batch-size -1", {}, 2, "--batch-size: expected a positive integer, got -1"),
    Case("eval checkpoint word", "eval $RUN --checkpoint newest", {}, 2,
         "--checkpoint: expected best, latest or a step number, got 'newest'"),
    Case("eval checkpoint step", "eval $RUN --checkpoint 99", {}, 2, "no checkpoint for step 99 (have: 3, 6)"),
    Case("eval split choice", "eval $RUN --split test", {}, 2, "argument --split: invalid choice: 'test'"),
    Case("eval packed run", "eval $RUN --packed", {}, 2, "--packed:"),
    Case("eval other config missing", "eval $RUN --config nothere.yaml", {}, 2, "nothere.yaml: config file not found"),
    Case("eval other config lr inf", "eval $RUN --config x.yaml", child("optim: {lr: .inf}\n"), 2,
         "x.yaml: optim.lr: expected a finite"),
    Case("eval other data relative", "eval $RUN --config x.yaml", child("data: {path: corpus.txt}\n"), 2,
         r"no file matches 'corpus.txt' \(relative to the current directory /"),
    Case("eval run config not utf-8", "eval r", {"r": Copy("$RUN"), "r/config.yaml": NOT_UTF8}, 2, "not UTF-8 text"),
    Case("eval zero-byte newest falls back", "eval r --batches 1", ZERO_NEWEST, 0,
         "r/checkpoints/step_00000006.pt: corrupt or unreadable checkpoint (EOFError); trying the previous one",
         stdout=r"r \(step_00000003.pt\)"),
    Case("eval zero-byte newest --json", "eval r --batches 1 --json", ZERO_NEWEST, 0, "step_00000006.pt: corrupt",
         stdout=JSON),
    Case("eval zero-byte named step", "eval r --checkpoint 6", ZERO_NEWEST, 2,
         "r/checkpoints/step_00000006.pt: corrupt or unreadable checkpoint (EOFError)"),
    Case("eval zero-byte best", "eval r --checkpoint best", {"r": Copy("$RUN"), "r/checkpoints/best.pt": b""}, 2,
         "r/checkpoints/best.pt: corrupt or unreadable checkpoint"),
    Case("eval garbage checkpoint named", "eval r --checkpoint 3",
         {"r": Copy("$RUN"), "r/checkpoints/step_00000003.pt": b"not a checkpoint"}, 2, "step_00000003.pt: corrupt"),
    Case("eval every checkpoint broken", "eval r",
         {"r": Copy("$RUN"), "r/checkpoints/step_00000003.pt": b"", "r/checkpoints/step_00000006.pt": b"x"}, 2,
         "step_00000006.pt: corrupt or unreadable checkpoint"),
    Case("eval no checkpoints", "eval r", {"r/config.yaml": Copy("$RUN/config.yaml")}, 2, "r: no checkpoint in r/checkpoints"),
    Case("eval token cache read-only", "eval $RUN --config x.yaml", {
        **child("data: {path: small.txt, cache_dir: ro}\n"), "small.txt": "All the world's a stage. " * 8}, 2,
        "cannot write token shards: Permission denied", read_only=("ro",)),
    Case("eval token cache disk full", "eval $RUN --config x.yaml", {
        **child("data: {path: small.txt, cache_dir: c}\n"), "small.txt": "Friends, Romans, countrymen. " * 8}, 2,
        "no space left on the device while writing token shards", outputs=("c", "c/*"), full=("c",)),

    # ------------------------------------------------------------------------------------ export
    Case("export needs --out", "export $RUN", {}, 2, "--out: required (the export directory to write), unless --push-to-hub uploads it"),
    Case("export not a run", "export nowhere --out e", {}, 2, "nowhere: not a run directory"),
    Case("export an export", "export $EXPORT --out e", {}, 2, "already an export; export reads a run directory"),
    Case("export dtype", "export $RUN --out e --dtype int8", {}, 2, "argument --dtype: invalid choice: 'int8'"),
    Case("export onto a file", "export $RUN --out e", {"e": "x"}, 2, "--out: e exists and is not a directory"),
    Case("export into a foreign folder", "export $RUN --out e", {"e/notes.txt": "mine"}, 2,
         "--out: e is not empty and is not a trainframe export"),
    Case("export over an export", "export $RUN --out e", {"e": Copy("$EXPORT")}, 2, "already holds an export; add --force"),
    Case("export checkpoint step", "export $RUN --out e --checkpoint 7", {}, 2, "no checkpoint for step 7"),
    Case("export read-only", "export $RUN --out ro/e", {}, 2, "ro/e: cannot write the export: Permission denied",
         read_only=("ro",)),
    Case("export disk full", "export $RUN --out e", {}, 2,
         r"e: no space left on the device while writing the export \(needs about [\d.]+ MB", full=(".",)),
    Case("export zero-byte newest falls back", "export r --out e", ZERO_NEWEST, 0, "step_00000006.pt: corrupt",
         outputs=("e", "e/*"), stdout=r"exported r \(step_00000003.pt, step 3\)"),
    Case("export zero-byte named", "export r --out e --checkpoint 6", ZERO_NEWEST, 2, "step_00000006.pt: corrupt"),

    # ---------------------------------------------------------------------------------- generate
    Case("generate temperature -1", "generate $RUN --temperature -1", {}, 2, "--temperature: expected a number >= 0"),
    Case("generate temperature nan", "generate $RUN --temperature nan", {}, 2, "--temperature: expected a number >= 0"),
    Case("generate temperature inf", "generate $RUN --temperature inf", {}, 2, "got inf"),
    Case("generate top-k -3", "generate $RUN --top-k -3", {}, 2, "--top-k: expected an integer >= 0 (0 = every token), got -3"),
    Case("generate top-p 1.5", "generate $RUN --top-p 1.5", {}, 2, "--top-p: expected a number > 0 and <= 1, got 1.5"),
    Case("generate top-p 0", "generate $RUN --top-p 0", {}, 2, "--top-p: expected a number > 0 and <= 1, got 0.0"),
    Case("generate max tokens 0", "generate $RUN --max-tokens 0", {}, 2, "--max-tokens: expected a positive integer"),
    Case("generate n 0", "generate $RUN --n 0", {}, 2, "--n: expected a positive integer, got 0"),
    Case("generate batch size 0", "generate $RUN --batch-size 0", {}, 2, "--batch-size: expected a positive integer"),
    Case("generate top-k word", "generate $RUN --top-k many", {}, 2, "argument --top-k: invalid int value"),
    Case("generate prefix tokens alone", "generate $RUN --prefix-tokens 3", {}, 2, "--prefix-tokens: expected a positive"),
    Case("generate prompt and prefix", "generate $RUN --prompt a --prefix-from p.txt", {"p.txt": "x"}, 2,
         "--prompt and --prefix-from: give one of them"),
    Case("generate infill without at", "generate $RUN --infill w.yml", {"w.yml": "on: push\n"}, 2, "--infill and --at"),
    Case("generate prefix missing", "generate $RUN --prefix-from nothere.txt", {}, 2, "--prefix-from: nothere.txt: cannot read"),
    Case("generate prefix not utf-8", "generate $RUN --prefix-from p.txt", {"p.txt": b"caf\xe9"}, 2,
         "--prefix-from: p.txt: cannot read"),
    Case("generate constrained bytes", "generate $RUN --constrained --max-tokens 2", {}, 2,
         "--constrained: the tokenizer ByteTokenizer has no allowed_next"),
    Case("generate infill on a text run", "generate $RUN --infill w.yml --at jobs", {"w.yml": "on: push\n"}, 2,
         "--infill: the run's tokenizer ByteTokenizer"),
    Case("generate export checkpoint", "generate $EXPORT --checkpoint 3", {}, 2, "is an export of a single checkpoint"),
    Case("generate out not empty", "generate $RUN --out o", {"o/a.txt": "mine"}, 2, "--out: o exists and is not an empty"),
    Case("generate out is a file", "generate $RUN --out o", {"o": "x"}, 2, "--out: o exists and is not an empty"),
    Case("generate out read-only", "generate $RUN --out ro/o --max-tokens 3", {}, 2,
         "ro/o: cannot write the samples: Permission denied", read_only=("ro",)),
    Case("generate out disk full", "generate $RUN --out o --max-tokens 3", {}, 2,
         "o: no space left on the device while writing the samples", full=(".",)),
    Case("generate zero-byte newest falls back", "generate r --max-tokens 3", ZERO_NEWEST, 0,
         "step_00000006.pt: corrupt or unreadable checkpoint (EOFError); trying the previous one"),
    Case("generate out writes samples", "generate $RUN --out o --max-tokens 3 --n 2", {}, 0, "",
         outputs=("o", "o/*"), stdout="2 samples, 2 decoded"),

    # -------------------------------------------------------------------------------------- plot
    Case("plot not a run", "plot nowhere", {}, 2, "nowhere: no metrics.jsonl"),
    Case("plot out into a missing folder", "plot $RUN --out nofolder/loss.png", {}, 2,
         "nofolder/loss.png: cannot write the plot: the folder nofolder does not exist"),
    Case("plot out unknown format", "plot $RUN --out loss.jsonl", {}, 2,
         "--out: loss.jsonl: expected a file name ending in one of"),
    Case("plot out read-only", "plot $RUN --out ro/loss.png", {}, 2, "ro/loss.png: cannot write the plot: Permission denied",
         read_only=("ro",)),
    Case("plot out disk full", "plot $RUN --out loss.png", {}, 2, "loss.png: no space left on the device while writing the plot",
         full=(".",)),
    Case("plot metrics not utf-8", "plot r --out p.png", {"r/metrics.jsonl": b'{"step": 1, "loss": 1.0}\n\xff\n'}, 2,
         "r/metrics.jsonl: not UTF-8 text (byte 25)"),
    Case("plot metrics not json", "plot r --out p.png", {"r/metrics.jsonl": "nope\n" + METRICS}, 2,
         "r/metrics.jsonl:1: not JSON"),
    Case("plot metrics not objects", "plot r --out p.png", {"r/metrics.jsonl": "[1, 2]\n" + METRICS}, 2,
         "r/metrics.jsonl:1: expected an object with a 'step' number"),
    Case("plot metrics no loss", "plot r --out p.png", {"r/metrics.jsonl": '{"step": 1}\n'}, 2, "no loss or val_loss rows"),
    Case("plot torn last line", "plot r --out p.png", {"r/metrics.jsonl": METRICS + '{"step": 3, "lo'}, 0, "",
         outputs=("p.png",), stdout="wrote p.png"),
    Case("plot null losses", "plot r --out p.png", {"r/metrics.jsonl": METRICS + '{"step": 3, "loss": null}\n'}, 0, "",
         outputs=("p.png",)),

    # --------------------------------------------------------------------------- tokenizer train
    Case("tokenizer train nothing", "tokenizer train", {}, 2, "tokenizer train: give a run CONFIG"),
    Case("tokenizer train bytes config", "tokenizer train tiny.yaml", TINY, 2, "tokenizer.name: 'bytes' has no trainer"),
    Case("tokenizer train kind choice", "tokenizer train --kind wordpiece", {}, 2, "argument --kind: invalid choice"),

    # ------------------------------------------------------------------------------------ benches
    Case("throughput steps 0", "bench throughput tiny.yaml --steps 0", TINY, 2, "--steps and --warmup: expected positive"),
    Case("throughput profile folder", "bench throughput tiny.yaml --profile no/t.json", TINY, 2,
         "--profile: no is not a directory"),
    Case("throughput missing config", "bench throughput nothere.yaml", {}, 2, "nothere.yaml: config file not found"),
    Case("throughput lr inf", "bench throughput tiny.yaml optim.lr=.inf", TINY, 2, "optim.lr: expected a finite number"),
    Case("throughput data choice", "bench throughput tiny.yaml --data fake", TINY, 2, "argument --data: invalid choice"),
    Case("target no config", "bench target", {}, 2, "bench target: expected CONFIG"),
    Case("target tolerance", "bench target tiny.yaml --tolerance 2", TINY, 2, "--tolerance: expected a share"),
    Case("target recipe without name", "bench target tiny.yaml --recipe a=1", TINY, 2, "expected a name first"),
    Case("target recipe twice", "bench target tiny.yaml --recipe a --recipe a", TINY, 2, "recipe 'a' is named twice"),
    Case("target recipe bad override", ["bench", "target", "tiny.yaml", "--recipe", "fast optim.lr=.inf"], TINY, 2,
         "recipe 'fast': command line: optim.lr: expected a finite number"),
    Case("target recipes missing", "bench target tiny.yaml --recipes r.yaml", TINY, 2, "--recipes: r.yaml: cannot read"),
    Case("target recipes no list", "bench target tiny.yaml --recipes r.yaml", {**TINY, "r.yaml": "a: 1\n"}, 2,
         "expected 'recipes:' and a list"),
    Case("target recipes unknown key", "bench target tiny.yaml --recipes r.yaml",
         {**TINY, "r.yaml": "recipes: [{name: a, seed: 1}]\n"}, 2, "recipes[0]: unknown key 'seed'"),
    Case("target seeds 0", "bench target tiny.yaml --seeds 0", TINY, 2, "--seeds: expected a positive integer"),
    Case("target out read-only", "bench target tiny.yaml --out ro/bt", TINY, 2,
         "ro/bt: cannot write the bench results: Permission denied", read_only=("ro",)),
    Case("target summarize nothing", "bench target --summarize nowhere", {}, 2, "--summarize: nowhere/results.json: cannot"),
    Case("predictive unknown controller", "bench predictive tiny.yaml --controllers full,bogus", TINY, 2,
         "--controllers: unknown phase controller 'bogus'"),
]


# --------------------------------------------------------------------------------------- fixtures
def shared_paths(root: Path) -> dict[str, str]:
    """The paths $-names stand for: a tiny run trained into ``root``, an export of it, the text."""
    (root / "tiny.yaml").write_text(TINY_YAML)
    run = root / "run"
    assert main(["train", str(root / "tiny.yaml"), "--run-dir", str(run), "trainer.max_steps=6",
                 "trainer.save_every=3"]) == 0
    export = root / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    return {k: str(v) for k, v in {"$RUN": run, "$EXPORT": export, "$TEXT": SHAKESPEARE}.items()}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The runs are trained once for the module."""
    return shared_paths(tmp_path_factory.mktemp("bad_input"))


def fill(text: str, paths: dict) -> str:
    for name in sorted(paths, key=len, reverse=True):  # $WRUN before $RUN
        text = text.replace(name, paths[name])
    return text


def tree(root: Path) -> dict[str, str | None]:
    """Relative path -> sha256 of every file (None for a folder) under ``root``, or of ``root`` itself."""
    if root.is_file():
        return {"": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {p.relative_to(root).as_posix(): None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def is_temp(name: str) -> bool:
    return fnmatch.fnmatch(name, ".*.tmp*") or name.endswith(".tmp") or ".partial" in name


class _FullFile:
    """A file on a full disk: it opens, and every write fails."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def refuse_writes(monkeypatch, read_only: list[str], full: list[str]) -> None:
    """Writing under ``read_only`` raises EACCES (opening, making a folder, renaming into it);
    writing under ``full`` raises ENOSPC (every write of a file opened there)."""
    def under(path, dirs) -> bool:  # strictly inside: the folder itself exists already
        if isinstance(path, int):
            return False
        p = os.path.abspath(os.fsdecode(os.fspath(path)))
        return any(p.startswith(d + os.sep) for d in dirs)

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    real_open, real_mkdir, real_replace, real_rename, real_os_open = (
        builtins.open, os.mkdir, os.replace, os.rename, os.open)

    def fake_open(file, mode="r", *args, **kwargs):
        writes = any(c in mode for c in "wax+")
        if writes and under(file, read_only):
            raise denied(file)
        f = real_open(file, mode, *args, **kwargs)
        return _FullFile(f) if writes and under(file, full) else f

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path, read_only):
            raise denied(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(real):
        def fake(src, dst, *args, **kwargs):
            if under(dst, read_only):
                raise denied(dst)
            return real(src, dst, *args, **kwargs)
        return fake

    def fake_mkdir(path, *args, **kwargs):
        if under(path, read_only):
            raise denied(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", guard(real_replace))
    monkeypatch.setattr(os, "rename", guard(real_rename))


def message_lines(err: str, argparse_exit: bool, line: int | None) -> list[str]:
    lines = err.splitlines()
    if argparse_exit:
        return [next((text for text in lines if "error:" in text), "")]
    if line is None:
        return lines
    return [lines[line] if lines else ""]


def matches(pattern: str, line: str) -> bool:
    if pattern == "":
        return line == ""
    return pattern in line or re.search(pattern, line) is not None


# ------------------------------------------------------------------------------------------ the test
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, shared, tmp_path, monkeypatch, capsys):
    run_case(case, shared, tmp_path, monkeypatch, capsys)


def run_case(case: Case, shared: dict, tmp_path, monkeypatch, capsys) -> None:
    """Run one case in a fresh directory and check everything the module docstring promises."""
    needs = set(re.findall(r"\$[A-Z]+", repr(case.argv) + repr(case.files)))
    if needs - set(shared):
        pytest.skip(f"needs {', '.join(sorted(needs - set(shared)))} (the shared workflow corpus)")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for rel, content in case.files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir()
        elif isinstance(content, Copy):
            source = Path(fill(content.source, shared))
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(fill(content, shared))
    for rel in case.read_only:
        (work / rel).mkdir(parents=True, exist_ok=True)
    before = tree(work)
    shared_before = {name: tree(Path(p)) for name, p in shared.items()}
    capsys.readouterr()
    argv = shlex.split(case.argv) if isinstance(case.argv, str) else case.argv
    argv = [fill(a, shared) for a in argv]

    refuse_writes(monkeypatch, [str(work / d) for d in case.read_only], [str(work / d) for d in case.full])
    try:
        code, argparse_exit = main(argv), False
    except SystemExit as e:  # argparse: usage and error on stderr
        code, argparse_exit = e.code, True
    finally:
        monkeypatch.undo()  # real writes again, for the checks and tmp_path's clean-up
    out, err = capsys.readouterr()

    lines = message_lines(err, argparse_exit, case.line)
    assert code == case.code, f"exit {code}, expected {case.code}; stderr:\n{err}"
    assert any(matches(case.message, line) for line in lines), f"stderr {lines} does not match {case.message!r}"
    assert "Traceback" not in err
    if case.stdout is JSON:
        json.loads(out)
    elif case.stdout is not None:
        assert re.search(case.stdout, out), f"stdout {out!r} does not match {case.stdout!r}"

    after = tree(work)
    changed = [p for p, h in before.items() if after.get(p, "gone") != h]
    assert not changed, f"inputs changed or removed: {changed}"
    new = [p for p in after if p not in before]
    unexpected = [p for p in new if not any(fnmatch.fnmatch(p, g) for g in case.outputs)]
    assert not unexpected, f"left behind: {unexpected}"
    temps = [p for p in after if is_temp(Path(p).name)]
    assert not temps, f"temporary files left: {temps}"
    for name, files in shared_before.items():
        assert tree(Path(shared[name])) == files, f"{name} changed"
    cache = Path(os.environ["TRAINFRAME_CACHE"])
    assert not [p for p in cache.rglob("*") if is_temp(p.name) and not p.name.endswith(".lock")]


def test_the_table_is_large_and_names_are_unique():
    assert len(CASES) >= 100
    assert len({c.name for c in CASES}) == len(CASES)
