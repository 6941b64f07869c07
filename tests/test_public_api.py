"""The names a plugin may import from ``trainframe``: every one documented in docs/plugins.md
imports, the package exports no undocumented one, and ``import trainframe`` alone stays cheap."""

import re
import subprocess
import sys

from support import REPO

import trainframe


def documented_names() -> set[str]:
    text = (REPO / "docs" / "plugins.md").read_text()
    section = text.split("### What a plugin may import", 1)[1].split("\n### ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    names = {n for row in rows for n in re.findall(r"`(\w+)`", row)}
    # "the capabilities above": the Protocols table of "The contract in code"
    contract = text.split("### The contract in code", 1)[1].split("\n### ", 1)[0]
    table = [line for line in contract.splitlines() if line.startswith("| ") and "`" in line]
    protocols = {re.findall(r"`(\w+)`", line.split("|")[2])[0] for line in table}  # the first name of the cell
    capabilities = {n for line in table for n in re.findall(r"`(\w+)`", line.split("|")[3])}
    return names | protocols | capabilities


def test_every_documented_name_imports_from_trainframe():
    names = documented_names()
    assert {"hookimpl", "ComponentConfig", "UserError", "Registry", "Phase", "PhaseController", "StepOutcome",
            "Tokenizer", "SupportsAllowedNext", "HasBlocks", "Controller"} <= names
    for name in sorted(names):
        namespace = {}
        exec(f"from trainframe import {name}", namespace)  # the statement a plugin writes
        assert namespace[name] is getattr(trainframe, name)
    assert set(trainframe.__all__) == names, "trainframe.__all__ and docs/plugins.md must list the same names"
    from trainframe import protocols

    assert set(protocols.__all__) <= names, "every Protocol is exported and documented"


def test_architecture_lists_the_same_names():
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## What a plugin may import", 1)[1].split("Beyond those, the modules", 1)[0]
    listed = set(re.findall(r"`(\w+)`", section))
    assert {n for n in trainframe.__all__ if not n.startswith(("Supports", "Has"))} <= listed


def test_the_names_are_the_real_ones():
    from trainframe.config import ComponentConfig
    from trainframe.errors import UserError
    from trainframe.phases import PhaseController
    from trainframe.registry import Registry

    assert (trainframe.ComponentConfig, trainframe.UserError, trainframe.PhaseController, trainframe.Registry) == \
        (ComponentConfig, UserError, PhaseController, Registry)


def test_import_trainframe_loads_nothing_heavy():
    code = "import sys, trainframe; print(sorted(m for m in ('torch', 'pydantic', 'trainframe.config') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error():
    try:
        trainframe.NoSuchName  # noqa: B018
    except AttributeError as e:
        assert "NoSuchName" in str(e)
    else:
        raise AssertionError("expected AttributeError")
