"""``trainframe plugins``: every plugin, its version and what it registers."""

from __future__ import annotations

import argparse

from trainframe.plugins import current


def plugins_main(args: argparse.Namespace) -> int:
    plugins = current()
    registry = plugins.registry
    for info in plugins.info:
        print(f"{info.name} {info.version} ({info.module}){'' if info.status == 'ok' else ': ' + info.status}")
        for kind, table in registry.components.items():
            names = sorted(n for n, c in table.items() if c.plugin == info.name)
            if names:
                print(f"  {kind}: {', '.join(names)}")
        commands = sorted(n for n, c in registry.commands.items() if c.plugin == info.name)
        if commands:
            print(f"  command: {', '.join(commands)}")
    return 0
