"""The plugin manager: built-ins, entry points, a disable list, and broken plugins isolated.

Built-in components live in ``trainframe.builtin`` and register through the same
``trainframe_register`` hook as third-party plugins, which are found through the ``trainframe``
entry-point group. A plugin that fails to import, misspells a hook or fails while registering is
reported in one line and left out; everything else keeps working. The built-in commands belong to
the CLI, which hands them in (``commands``), so a program that uses trainframe as a library loads
no command code.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from trainframe import hookspecs
from trainframe.registry import FailedPlugin, Registry

GROUP = "trainframe"


@dataclass
class PluginInfo:
    name: str
    version: str
    module: str
    status: str = "ok"  # ok, disabled, or the one-line reason it failed


@dataclass
class Plugins:
    manager: pluggy.PluginManager
    registry: Registry
    info: list[PluginInfo] = field(default_factory=list)
    commands: Callable[[Registry], None] | None = None  # what added the built-in commands

    @property
    def hook(self):
        return self.manager.hook

    def failures(self) -> list[str]:
        return [f"plugin '{p.name}' {p.status}" for p in self.info if p.status not in ("ok", "disabled")]


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get("TRAINFRAME_DISABLE_PLUGINS", "").split(",") if n.strip()}


def hook_problems(manager: pluggy.PluginManager, plugin) -> str | None:
    """A misspelled hook implementation: marked with @hookimpl but matching no hookspec."""
    known = [n for n in dir(hookspecs) if n.startswith("trainframe_")]
    for impl_name in dir(plugin):
        opts = manager.parse_hookimpl_opts(plugin, impl_name)
        if opts is not None and impl_name not in known:
            match = difflib.get_close_matches(impl_name, known, n=1)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            return f"implements unknown hook '{impl_name}'{hint}"
    return None


def invalid_hook_message(error: pluggy.PluginValidationError) -> str:
    """pluggy's several-line message as one line: which hook, and which arguments are wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "has an invalid hook implementation: " + "; ".join(lines[1:] or lines)


def _entry_points():
    return sorted(metadata.entry_points(group=GROUP), key=lambda ep: ep.name)


def _extra_hint(ep, error: Exception) -> str:
    """' (pip install 'DIST[EXTRA]')' for a missing module of a plugin whose distribution has an
    extra named after it (trainframe_text -> trainframe[text]): the first-party plugins' case."""
    if not isinstance(error, ModuleNotFoundError) or ep.dist is None:
        return ""
    dist = ep.dist.metadata["Name"]
    extra = ep.name.removeprefix(dist.replace("-", "_") + "_")
    return f" (pip install '{dist}[{extra}]')" if extra in (ep.dist.metadata.get_all("Provides-Extra") or []) else ""


def load_plugins(extra: list[tuple[str, object]] | None = None,
                 commands: Callable[[Registry], None] | None = None) -> Plugins:
    """Build the plugin manager and the registry. ``extra``: (name, module) pairs, for tests; one
    replaces an installed plugin of the same entry-point name or module (see ``trainframe.testing``).
    ``commands(registry)``: adds the built-in commands, as the built-in plugin's (the CLI's own)."""
    from trainframe import __version__, builtin

    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager, Registry(), commands=commands)
    disabled = _disabled()

    candidates: list[tuple[str, str, str, object]] = [("trainframe", __version__, "trainframe.builtin", builtin)]
    # A test's copy of a plugin that is also installed stands in for it, rather than registering twice.
    local = {name for name, _ in extra or []} | {getattr(module, "__name__", None) for _, module in extra or []}
    for ep in _entry_points():
        if ep.name in local or ep.module in local:
            continue
        version = ep.dist.version if ep.dist else "?"
        if ep.name in disabled:
            plugins.info.append(PluginInfo(ep.name, version, ep.value, "disabled"))
            continue
        try:
            module = ep.load()
        except Exception as e:  # a broken plugin must not take the others down
            plugins.info.append(PluginInfo(ep.name, version, ep.value,
                                           f"failed to load: {type(e).__name__}: {e}{_extra_hint(ep, e)}"))
            continue
        candidates.append((ep.name, version, ep.value, module))
    for name, module in extra or []:
        if name not in disabled:
            candidates.append((name, "local", getattr(module, "__name__", name), module))

    for name, version, where, module in candidates:
        problem = hook_problems(manager, module)
        if problem:
            plugins.info.append(PluginInfo(name, version, where, problem))
            continue
        try:
            manager.register(module, name=name)
        except pluggy.PluginValidationError as e:  # e.g. a hook argument the spec does not have
            plugins.info.append(PluginInfo(name, version, where, invalid_hook_message(e)))
            continue
        plugins.info.append(PluginInfo(name, version, where))

    # Each plugin registers into its own scratch registry first, so a plugin that fails halfway
    # leaves nothing behind.
    provided: dict[str, frozenset] = {}  # what a plugin that failed to register had added before
    for impl in manager.hook.trainframe_register.get_hookimpls():
        scratch = Registry(current_plugin=impl.plugin_name)
        try:
            impl.function(registry=scratch)
            if impl.plugin_name == "trainframe" and commands is not None:
                commands(scratch)
            _merge_registry(plugins.registry, scratch)
        except Exception as e:
            manager.unregister(name=impl.plugin_name)
            provided[impl.plugin_name] = frozenset((k, n) for k, table in scratch.components.items() for n in table)
            for info in plugins.info:
                if info.name == impl.plugin_name:
                    info.status = f"failed to register: {type(e).__name__}: {e}"
    plugins.registry.failed = [FailedPlugin(p.name, p.status, provided.get(p.name, frozenset()))
                               for p in plugins.info if p.status not in ("ok", "disabled")]
    for line in plugins.failures():
        print(f"trainframe: warning: {line}", file=sys.stderr)
    return plugins


def _merge_registry(into: Registry, new: Registry) -> None:
    for kind, table in new.components.items():
        for name in table:
            if name in into.components[kind]:
                other = into.components[kind][name].plugin
                raise ValueError(f"{kind} '{name}' is already registered by plugin '{other}'")
    for name in new.commands:
        if name in into.commands:
            raise ValueError(f"command '{name}' is already registered by plugin '{into.commands[name].plugin}'")
    for name in new.model_presets:
        if name in into.model_presets:
            raise ValueError(f"model preset '{name}' is already registered by another plugin")
    for kind, table in new.components.items():
        into.components[kind].update(table)
    into.commands.update(new.commands)
    into.model_presets.update(new.model_presets)


_CURRENT: Plugins | None = None


def current(commands: Callable[[Registry], None] | None = None) -> Plugins:
    """The process's plugin manager, loaded on first use. ``commands``: see ``load_plugins``; the
    CLI passes its own, and they are added if library code loaded the plugins first."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = load_plugins(commands=commands)
    elif commands is not None and _CURRENT.commands is None:
        scratch = Registry(current_plugin="trainframe")
        commands(scratch)
        _merge_registry(_CURRENT.registry, scratch)
        _CURRENT.commands = commands
    return _CURRENT
