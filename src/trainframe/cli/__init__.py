"""The ``trainframe`` command. Every subcommand, built-in or from a plugin, comes from the registry.

The CLI sits on top of the library: one module here per command (or command group), each a thin
layer of arguments and printing over library functions. Nothing below imports this package
(``tests/test_layers.py``); the built-in commands reach the registry through ``current(commands=...)``.
"""

from __future__ import annotations

import argparse
import sys

from trainframe import __version__
from trainframe.errors import UserError


def build_parser(registry) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainframe", description="Train decoder-only language models from YAML configs; everything is a plugin.")
    parser.add_argument("--version", action="version", version=f"trainframe {__version__}")
    groups: dict[tuple, argparse._SubParsersAction] = {(): parser.add_subparsers(dest="command", metavar="COMMAND")}
    parsers: dict[tuple, argparse.ArgumentParser] = {}
    for name in sorted(registry.commands, key=lambda n: (len(n.split()), n)):
        command = registry.commands[name]
        words = tuple(name.split())
        for depth in range(1, len(words)):  # intermediate groups such as "config" in "config show"
            prefix = words[:depth]
            if prefix not in groups:
                group_parser = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{' '.join(prefix)} commands")
                parsers[prefix] = group_parser
                groups[prefix] = group_parser.add_subparsers(dest=f"command_{depth}", metavar="COMMAND",
                                                             required=True)
        sub = groups[words[:-1]].add_parser(words[-1], help=command.help, description=command.help)
        if command.add_arguments:
            command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def register_commands(registry) -> None:
    """The built-in commands, registered as the built-in plugin's (see ``trainframe.plugins.load_plugins``)."""
    # Imported here, when the commands are registered, so that `import trainframe.cli` stays cheap.
    from trainframe.cli.bench import target_args, target_main, throughput_args, throughput_main
    from trainframe.cli.config import config_args, config_show_main, config_validate_main, describe_args, describe_main
    from trainframe.cli.eval import eval_args, eval_main
    from trainframe.cli.export import export_args, export_main
    from trainframe.cli.generate import generate_args, generate_main
    from trainframe.cli.plot import plot_args, plot_main
    from trainframe.cli.plugins import plugins_args, plugins_main
    from trainframe.cli.resume import resume_args, resume_main
    from trainframe.cli.tokenizer import tokenizer_train_args, tokenizer_train_main
    from trainframe.cli.train import train_args, train_main

    registry.add_command("train", train_main, train_args, help="train a model from a YAML config")
    registry.add_command("resume", resume_main, resume_args, help="continue a run from its newest good checkpoint")
    registry.add_command("bench throughput", throughput_main, throughput_args,
                         help="time training steps: tokens/s, ms/step, MFU, peak memory")
    registry.add_command("bench target", target_main, target_args,
                         help="recipes against a baseline: wall-clock, tokens, steps and FLOPs to a target val loss")
    registry.add_command("config show", config_show_main, config_args, help="print the resolved config")
    registry.add_command("config validate", config_validate_main, config_args, help="check a config")
    registry.add_command("config describe", describe_main, describe_args,
                         help="list config options (key, type, default, description) of every section and component")
    registry.add_command("plugins", plugins_main, plugins_args,
                         help="list plugins, versions and what each registers (-v: help lines and config keys)")
    registry.add_command("generate", generate_main, generate_args, help="sample text from a trained run")
    registry.add_command("plot", plot_main, plot_args, help="plot a run's train and validation loss to a PNG")
    registry.add_command("export", export_main, export_args,
                         help="write a checkpoint as safetensors + config + tokenizer files (+ packed ternary)")
    registry.add_command("eval", eval_main, eval_args,
                         help="val loss, perplexity and bits per character of a run or an export")
    registry.add_command("tokenizer train", tokenizer_train_main, tokenizer_train_args,
                         help="learn a tokenizer (the kind a config names, or --kind) and write it to one file")


def main(argv: list[str] | None = None) -> int:
    from trainframe.plugins import current

    try:
        parser = build_parser(current(commands=register_commands).registry)
        # Overrides may come after options (`train x.yaml --run-dir d a.b=1`): argparse stops
        # collecting a positional list at an option, so pick the leftovers up here.
        args, extra = parser.parse_known_args(argv)
        if extra:
            if not hasattr(args, "overrides") or any(a.startswith("-") for a in extra):
                parser.parse_args(argv)  # reports the unknown arguments and exits 2
            args.overrides = [*args.overrides, *extra]
        if not hasattr(args, "_run"):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except UserError as e:
        print(str(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trainframe: aborted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
