"""A whole section on the command line: without ``name`` it merges into the file's section (the
file's component and its other keys stay); with ``name`` it replaces the section (docs/configs.md)."""

import yaml
from support import run_main

MUON = """
model: {name: gpt, preset: tiny}
tokenizer: {name: bytes}
data: {name: textfile, path: corpus.txt}
optim: {name: muon, lr: 0.01, adamw_lr: 0.004}
trainer: {max_steps: 7, batch_size: 3, device: cpu}
loggers: [{name: jsonl}, {name: console, rich: true}]
"""


def shown(tmp_path, monkeypatch, *overrides) -> dict:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text(MUON)
    result = run_main("config", "show", "x.yaml", *overrides)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_section_without_name_keeps_the_files_component(tmp_path, monkeypatch):
    optim = shown(tmp_path, monkeypatch, "optim={lr: 0.5}")["optim"]
    assert (optim["name"], optim["lr"], optim["adamw_lr"]) == ("muon", 0.5, 0.004)


def test_section_with_a_name_replaces_it(tmp_path, monkeypatch):
    optim = shown(tmp_path, monkeypatch, "optim={name: adamw, lr: 0.5}")["optim"]
    assert (optim["name"], optim["lr"]) == ("adamw", 0.5) and "adamw_lr" not in optim
    same = shown(tmp_path, monkeypatch, "optim={name: muon}")["optim"]
    assert same["lr"] == 0.02  # the file's lr went with the section: muon's default


def test_trainer_and_list_items_merge_too(tmp_path, monkeypatch):
    data = shown(tmp_path, monkeypatch, "trainer={max_steps: 3}", "loggers.1={rich: false}")
    assert (data["trainer"]["max_steps"], data["trainer"]["batch_size"]) == (3, 3)
    assert data["loggers"] == [{"name": "jsonl"}, {"name": "console", "rich": False}]


def test_merged_keys_are_blamed_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text(MUON)
    result = run_main("config", "validate", "x.yaml", "optim={lr: -1}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "command line: optim.lr: expected a number > 0, got -1"
