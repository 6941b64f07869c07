"""``trainframe config show``, ``config validate`` and ``config describe``."""

from __future__ import annotations

import argparse
import os
import sys

from trainframe.config import load_config
from trainframe.describe import describe
from trainframe.plugins import current
from trainframe.registry import KINDS


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. trainer.max_steps=10 optim.lr=3e-4")


def config_show_main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides, current().registry)
    print(cfg.to_yaml(), end="")
    return 0


def config_validate_main(args: argparse.Namespace) -> int:
    load_config(args.config, args.overrides, current().registry)
    print(f"{args.config}: valid")
    return 0


def describe_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "Print the options of the run config's own sections (run, trainer) and of every registered\n"
        "component, built-in or from a plugin: key, type, default and description, read from the\n"
        "config models. No argument: everything; KIND: every component of that kind; KIND NAME: one.")
    p.epilog = ("examples:\n"
                "  trainframe config describe trainer\n"
                "  trainframe config describe optimizer\n"
                "  trainframe config describe schedule wsd\n"
                "  trainframe config describe | grep -i warmup")
    p.add_argument("kind", nargs="?", metavar="KIND",
                   help=f"run, trainer, or a component kind: {', '.join(KINDS)} (section names such as data, "
                        "optim, loggers also work)")
    p.add_argument("name", nargs="?", metavar="NAME", help="a registered component of KIND, e.g. adamw, cosine, gpt")


def describe_main(args: argparse.Namespace) -> int:
    text = "\n".join(describe(current().registry, args.kind, args.name))
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `config describe | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
