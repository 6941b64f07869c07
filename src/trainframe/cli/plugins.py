"""``trainframe plugins``: every plugin, its version and what it registers; ``-v`` adds each
component's help line and config keys (the rows ``trainframe config describe`` prints)."""

from __future__ import annotations

import argparse

from trainframe.plugins import current
from trainframe.registry import KINDS


def plugins_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="each component's help line and config keys, each command's help line")


def _verbose_lines(registry, kind: str, component) -> list[str]:
    from trainframe.describe import describe  # the same rows as `config describe KIND NAME`

    title = f"  {kind} {component.name}" + (f" - {component.help}" if component.help else "")
    rows = describe(registry, kind, component.name)[1:] if kind in KINDS else []
    return [title, *("  " + row for row in rows)]


def plugins_main(args: argparse.Namespace) -> int:
    plugins = current()
    registry = plugins.registry
    verbose = getattr(args, "verbose", False)
    for info in plugins.info:
        print(f"{info.name} {info.version} ({info.module}){'' if info.status == 'ok' else ': ' + info.status}")
        for kind, table in registry.components.items():
            names = sorted(n for n, c in table.items() if c.plugin == info.name)
            if names and verbose:
                for name in names:
                    print("\n".join(_verbose_lines(registry, kind, table[name])))
            elif names:
                print(f"  {kind}: {', '.join(names)}")
        commands = sorted(n for n, c in registry.commands.items() if c.plugin == info.name)
        if commands and verbose:
            for name in commands:
                about = registry.commands[name].help
                print(f"  command {name}" + (f" - {about}" if about else ""))
        elif commands:
            print(f"  command: {', '.join(commands)}")
    return 0
