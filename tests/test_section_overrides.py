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


def test_extends_merges_the_same_component_and_replaces_another(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parent.yaml").write_text(MUON + "schedule: {name: cosine, warmup_steps: 5, min_lr_ratio: 0.2}\n")
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\noptim: {name: muon, lr: 0.03}\n"
                                         "schedule: {name: wsd, decay_fraction: 0.3}\n")
    result = run_main("config", "show", "child.yaml")
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    assert (data["optim"]["lr"], data["optim"]["adamw_lr"]) == (0.03, 0.004)  # same component: merged
    schedule = data["schedule"]  # another component: replaced (the parent's warmup_steps would be an unknown key)
    assert (schedule["name"], schedule["min_lr_ratio"], schedule["decay_fraction"]) == ("wsd", 0.0, 0.3)
