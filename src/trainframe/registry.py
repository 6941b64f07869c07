"""Name -> component registries, filled by the ``trainframe_register`` hook.

Every component (built-in or third-party) is registered the same way::

    @trainframe.hookimpl
    def trainframe_register(registry):
        registry.add("schedule", "linear", build_linear, LinearConfig, help="linear decay")

A component's factory receives its validated config model first; what else it receives depends
on the kind and is documented in docs/plugins.md.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from trainframe.config import ComponentConfig
from trainframe.errors import UserError

KINDS = ("dataset", "tokenizer", "model", "optimizer", "schedule", "phases", "logger", "callback")


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    config: type[ComponentConfig]
    plugin: str
    help: str = ""
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # tokenizer trainers' options


@dataclass(frozen=True)
class Command:
    """A CLI command. ``name`` may have several words (``"tokenizer check"``) for nested commands."""

    name: str
    run: Callable[[argparse.Namespace], int | None]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    help: str = ""
    plugin: str = ""


def closest(name: str, choices) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


@dataclass(frozen=True)
class FailedPlugin:
    """A plugin left out at load: a config naming its components is told why, not 'unknown'."""

    name: str
    reason: str  # as `trainframe plugins` shows it: "failed to load: ModuleNotFoundError: ..."
    provides: frozenset = frozenset()  # (kind, name) it registered before failing, when known


@dataclass
class Registry:
    # Tokenizer trainers sit next to the component kinds (listed and merged alike), but are added only
    # through add_tokenizer_trainer.
    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {k: {} for k in (*KINDS, "tokenizer_trainer")})
    commands: dict[str, Command] = field(default_factory=dict)
    # Named presets of the ``gpt`` model: partial ModelConfig fields.
    model_presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    current_plugin: str = "trainframe"
    failed: list[FailedPlugin] = field(default_factory=list)

    def add(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        config: type[ComponentConfig] = ComponentConfig,
        help: str = "",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not (isinstance(config, type) and issubclass(config, ComponentConfig)):
            raise TypeError(f"{kind} {name!r}: config must subclass trainframe.config.ComponentConfig")
        self._put(Component(kind, name, factory, config, self.current_plugin, help), kind)

    def add_command(
        self,
        name: str,
        run: Callable[[argparse.Namespace], int | None],
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        help: str = "",
    ) -> None:
        if name in self.commands:
            raise ValueError(f"command {name!r} is registered twice")
        self.commands[name] = Command(name, run, add_arguments, help, self.current_plugin)

    def add_tokenizer_trainer(
        self,
        name: str,
        run: Callable[[argparse.Namespace], int | None],
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        help: str = "",
    ) -> None:
        """Make ``trainframe tokenizer train --kind NAME`` train this kind of tokenizer. A run config
        whose ``tokenizer.name`` is NAME picks it without ``--kind``. ``add_arguments`` adds the
        kind's own options (they share one parser with every other kind's, so names must not clash)."""
        self._put(Component("tokenizer_trainer", name, run, ComponentConfig, self.current_plugin, help, add_arguments),
                  "tokenizer trainer")

    def add_model_preset(self, name: str, fields: dict[str, Any]) -> None:
        """Make ``model: {name: gpt, preset: NAME}`` mean these ModelConfig fields (fields the
        config sets win)."""
        if name in self.model_presets:
            raise ValueError(f"model preset {name!r} is registered twice")
        self.model_presets[name] = dict(fields)

    def _put(self, c: Component, what: str) -> None:
        table = self.components[c.kind]
        if c.name in table:
            other = table[c.name].plugin
            raise ValueError(f"{what} {c.name!r} is registered twice (by {other} and {self.current_plugin})")
        table[c.name] = c

    def get(self, kind: str, name: str) -> Component:
        table = self.components[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            # The plugin that registered the name, else the one named like it: it alone is the cause.
            culprits = ([f for f in self.failed if (kind, name) in f.provides]
                        or [f for f in self.failed if f.name == name])
            if culprits:
                raise UserError(f"unknown {kind} '{name}'; {self._failures(culprits)}")
            if self.failed:  # any of them may have provided it, so no 'did you mean'
                raise UserError(f"unknown {kind} '{name}'; {self._failures(self.failed)}; registered: {known}")
            raise UserError(f"unknown {kind} '{name}'{closest(name, table)}; registered: {known}")
        return table[name]

    @staticmethod
    def _failures(failed: list[FailedPlugin]) -> str:
        return "; ".join(f"plugin '{f.name}' {f.reason}" for f in failed)

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])
