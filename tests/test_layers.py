"""The layers of docs/architecture.md: imports only point down.

The walk reads every module with ``ast`` (nothing imported; an import inside a function counts).
Two runs check the same at run time: the library loads no command code, and the CLI adds its
commands to plugins that library code loaded first.
"""

import ast
import subprocess
import sys
from pathlib import Path

from support import REPO, run_main

SRC = REPO / "src" / "trainframe"
PLUGINS = [REPO / "plugins", REPO / "examples"]  # first-party plugins and the one to copy
CLI = "trainframe.cli"
ENTRY = {"trainframe.__main__"}  # `python -m trainframe`: the CLI's other door


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import in the file; ``from a import b`` gives ``a.b`` too,
    since ``b`` may be a module. Relative imports are resolved against ``module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def modules(root: Path):
    for path in sorted(root.rglob("*.py")):
        yield path, module_name(path, root)


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "trainframe" / "engine"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from trainframe.cli import main\n    from . import y\n")
    found = {name for _, name in imports(pkg / "x.py", "trainframe.engine.x")}
    assert {"trainframe.cli", "trainframe.cli.main", "trainframe.engine", "trainframe.engine.y"} <= found


def violations(root: Path, bad, skip=lambda name: False) -> list[str]:
    """One line per import statement of a module under ``root`` that ``bad(imported name)`` flags."""
    out = []
    for path, name in modules(root):
        if skip(name):
            continue
        seen = set()
        for line, target in imports(path, name):
            if bad(target) and line not in seen:
                seen.add(line)
                out.append(f"{name} ({path.relative_to(REPO)}:{line}) imports {target}")
    return out


def test_no_library_module_imports_the_cli():
    wrong = violations(SRC.parent, lambda t: within(t, CLI), skip=lambda n: within(n, CLI) or n in ENTRY)
    assert not wrong, "the CLI is the top layer; only trainframe.cli imports it:\n" + "\n".join(wrong)


def test_no_core_module_imports_a_plugin():
    wrong = violations(SRC.parent, lambda t: t.split(".")[0].startswith("trainframe_"))
    assert not wrong, "core must work without any plugin; reach plugins through the registry:\n" + "\n".join(wrong)


def test_plugins_import_no_cli_module():
    wrong = [line for root in PLUGINS for line in violations(root, lambda t: within(t, CLI))]
    assert not wrong, "plugins use the library (docs/architecture.md), not the CLI's modules:\n" + "\n".join(wrong)


def test_the_library_loads_no_command_code():
    code = ("import sys; from trainframe.plugins import current; from trainframe.runs import load_run; "
            "registry = current().registry; "
            "print(sorted(m for m in sys.modules if m.startswith('trainframe.cli')), 'train' in registry.commands)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split("\n")[0] == "[] False"


def test_the_cli_adds_its_commands_to_plugins_the_library_loaded(monkeypatch):
    from trainframe import plugins

    monkeypatch.setattr(plugins, "_CURRENT", plugins.load_plugins())
    assert "train" not in plugins.current().registry.commands
    result = run_main("plugins")
    assert result.returncode == 0 and "command: bench target, bench throughput" in result.stdout
    assert plugins.current().registry.commands["train"].plugin == "trainframe"
