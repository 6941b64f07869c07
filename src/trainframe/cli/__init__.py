"""The ``trainframe`` command. Every subcommand, built-in or from a plugin, comes from the registry."""

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


def main(argv: list[str] | None = None) -> int:
    from trainframe.plugins import current

    try:
        parser = build_parser(current().registry)
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
