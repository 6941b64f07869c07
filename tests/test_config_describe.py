"""`trainframe config describe`: every option of the run config and of registered components."""

import re

import pytest
from support import REPO

from trainframe.cli import main
from trainframe.config import TrainerConfig
from trainframe.describe import option_rows
from trainframe.plugins import load_plugins
from trainframe.registry import KINDS


def describe(capsys, *args):
    code = main(["config", "describe", *args])
    out, err = capsys.readouterr()
    return code, out, err


def row(out, key):
    """The columns of the option row whose key is ``key``."""
    for line in out.splitlines():
        if line.startswith("  ") and line.split()[0] == key:
            return line
    raise AssertionError(f"no row for {key!r} in:\n{out}")


@pytest.mark.slow
def test_everything(capsys):
    code, out, err = describe(capsys)
    assert code == 0 and err == ""
    assert out.startswith("run: the top-level keys")
    assert "\ntrainer: the training loop" in out
    for kind in ("dataset", "tokenizer", "model", "optimizer", "schedule", "phases", "logger"):
        assert f"\n{kind} " in out, kind
    for title in ("optimizer adamw (trainframe)", "schedule wsd (trainframe)", "model gpt (trainframe)",
                  "phases selective (trainframe_hybrid)", "dataset text (trainframe_text)"):
        assert title in out
    assert "trainer.max_steps" not in out  # the trainer has its own block, not repeated under run


def test_one_kind(capsys):
    code, out, _ = describe(capsys, "schedule")
    assert code == 0
    titles = [line.split(" (")[0] for line in out.splitlines() if line.startswith("schedule ")]
    assert titles == ["schedule constant", "schedule cosine", "schedule wsd"]
    assert "optimizer" not in out


def test_section_name_is_an_alias(capsys):
    assert describe(capsys, "optim")[1] == describe(capsys, "optimizer")[1]


def test_one_component(capsys):
    code, out, _ = describe(capsys, "optimizer", "adamw")
    assert code == 0
    assert out.splitlines()[0].startswith("optimizer adamw (trainframe)")
    assert row(out, "lr").split()[:4] == ["lr", "float,", ">", "0"]
    assert "0.0003" in row(out, "lr") and "peak learning rate" in row(out, "lr")
    assert "tuple[float, float]" in row(out, "betas") and "[0.9, 0.95]" in row(out, "betas")
    assert "bool | null" in row(out, "fused")


def test_literal_list_and_nested_types(capsys):
    _, out, _ = describe(capsys, "phases", "selective")
    assert "stale | random" in row(out, "select")
    _, out, _ = describe(capsys, "phases", "outer-gated")
    assert "list[float]" in row(out, "scales") and "[0.5, 1.0, 1.5]" in row(out, "scales")
    _, out, _ = describe(capsys, "data", "text")
    assert "list[mapping]" in row(out, "sources") and "required" in row(out, "sources")
    assert "line | paragraph | document" in row(out, "sources[].sample_by")


def test_trainer_and_run(capsys):
    _, out, _ = describe(capsys, "trainer")
    line = row(out, "max_steps")
    assert "int, > 0" in line and "1000" in line
    assert "auto | fp32 | bf16" in row(out, "precision")
    assert '"\\n"' in row(out, "sample_prompt")
    _, out, _ = describe(capsys, "run")
    assert "{name: adamw}" in row(out, "optim") and "required" in row(out, "model")


def test_every_kind_is_accepted(capsys):
    for kind in KINDS:
        assert describe(capsys, kind)[0] == 0, kind


@pytest.mark.parametrize("args,line", [
    (["optimzer"], "unknown config kind 'optimzer' (did you mean 'optimizer'?); expected one of run, trainer, "
                   "dataset, tokenizer, model, optimizer, schedule, phases, logger, callback"),
    (["optimizer", "adamx"], "unknown optimizer 'adamx' (did you mean 'adamw'?); registered: adamw, muon"),
    (["schedule", "cosin"], "unknown schedule 'cosin' (did you mean 'cosine'?); registered: constant, cosine, wsd"),
    (["trainer", "x"], "config describe trainer: takes no NAME (got 'x'); 'trainer' is a section of the run "
                       "config, not a kind of component"),
])
def test_bad_kind_or_name(capsys, args, line):
    code, out, err = describe(capsys, *args)
    assert (code, out, err) == (2, "", line + "\n")


# ------------------------------------------------------------------------ docs/configs.md in step
DOCS = REPO / "docs"
FIRST_PARTY = {"trainframe", "trainframe_text", "trainframe_workflows", "trainframe_hybrid"}


def _configs_doc() -> tuple[str, str]:
    """docs/configs.md, and it together with the doc pages it links to (component details live there)."""
    main_text = (DOCS / "configs.md").read_text()
    pages = sorted(set(re.findall(r"\]\(([\w.-]+\.md)", main_text)))
    return main_text, main_text + "".join((DOCS / p).read_text() for p in pages if (DOCS / p).exists())


def test_configs_doc_lists_every_trainer_key():
    text, _ = _configs_doc()
    section = text.split("## `trainer`", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert documented == list(TrainerConfig.model_fields), \
        "docs/configs.md: the trainer table must list every TrainerConfig key, in order"


def test_configs_doc_mentions_every_component_option():
    main_text, text = _configs_doc()
    registry = load_plugins().registry
    missing = []
    for kind in KINDS:
        for name in registry.names(kind):
            if registry.components[kind][name].plugin not in FIRST_PARTY:
                continue  # an installed third-party plugin documents itself
            if f"`{name}`" not in main_text and f"name: {name}}}" not in main_text:
                missing.append(f"{kind} {name}")
            for key, *_ in option_rows(registry.components[kind][name].config):
                leaf = key.rsplit(".", 1)[-1]
                if f"`{leaf}`" not in text:
                    missing.append(f"{kind} {name}: {key}")
    assert not missing, "not in docs/configs.md (or a page it links to): " + "; ".join(missing)
