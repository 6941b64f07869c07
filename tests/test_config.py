"""Configs: extends, overrides, and the exact one-line message for each kind of mistake."""

import pytest
from support import SHAKESPEARE, core_plugins, run_main

from trainframe.config import load_config
from trainframe.errors import UserError

BASE = f"""model: {{name: gpt, preset: tiny}}
tokenizer: {{name: bytes}}
data: {{name: textfile, path: {SHAKESPEARE}}}
"""


@pytest.fixture(scope="module")
def registry():
    return core_plugins().registry


def errors_of(tmp_path, registry, body, overrides=(), base=BASE):
    path = tmp_path / "x.yaml"
    path.write_text(base + body)
    with pytest.raises(UserError) as exc:
        load_config(path, list(overrides), registry)
    return str(exc.value).replace(str(path), "x.yaml").splitlines()


BAD = [
    ("optim: {lr: fast}", "x.yaml: optim.lr: expected a number > 0, got 'fast'"),
    ("optim: {lr: -1}", "x.yaml: optim.lr: expected a number > 0, got -1"),
    ("optim: {lrr: 0.1}", "x.yaml: optim.lrr: unknown key (did you mean 'lr'?)"),
    ("optim: {name: sgd}", "x.yaml: optim.name: unknown optimizer 'sgd'; registered: adamw, muon"),
    ("optim: {betas: [0.9]}", "x.yaml: optim.betas: expected more items: item 1 is missing"),
    ("trainer: {max_step: 5}", "x.yaml: trainer.max_step: unknown key (did you mean 'max_steps'?)"),
    ("trainer: {max_steps: 0}", "x.yaml: trainer.max_steps: expected an integer > 0, got 0"),
    ("trainer: {max_steps: ten}", "x.yaml: trainer.max_steps: expected an integer > 0, got 'ten'"),
    ("trainer: {precision: fp16}",
     "x.yaml: trainer.precision: expected one of 'auto', 'fp32' or 'bf16', got 'fp16'"),
    ("trainer: {grad_clip: abc}", "x.yaml: trainer.grad_clip: expected a number > 0, got 'abc'"),
    ("trainer: {compile: maybe}", "x.yaml: trainer.compile: expected true or false, got 'maybe'"),
    ("trainer: 5", "x.yaml: trainer: expected a mapping, got 5"),
    ("seeed: 3", "x.yaml: seeed: unknown key (did you mean 'seed'?)"),
    ("schedule: {name: cosin}",
     "x.yaml: schedule.name: unknown schedule 'cosin' (did you mean 'cosine'?); registered: constant, cosine, wsd"),
    ("schedule: {name: cosine, warmup_steps: -3}", "x.yaml: schedule.warmup_steps: expected an integer >= 0, got -3"),
    ("schedule: {name: wsd, warmup_fraction: 0.5, decay_fraction: 0.7}",
     "x.yaml: schedule.warmup_fraction: warmup_fraction + decay_fraction must be at most 1"),
    ("schedule: {name: wsd, decay_shape: exp}",
     "x.yaml: schedule.decay_shape: expected one of 'linear', 'cosine' or 'sqrt', got 'exp'"),
    ("loggers: [{name: neptune}]",
     "x.yaml: loggers.0.name: unknown logger 'neptune'; registered: console, jsonl, mlflow, tensorboard, wandb"),
    ("loggers: [{name: jsonl, every: 3}]", "x.yaml: loggers.0.every: unknown key"),
    ("phases: {name: ful}", "x.yaml: phases.name: unknown phases 'ful' (did you mean 'full'?); registered: full"),
    ("data: {name: textfile, path: a.txt, val_fraction: 1.5}",
     "x.yaml: data.val_fraction: expected a number >= 0 and < 1, got 1.5"),
    ("data: tiny", "x.yaml: data: expected a mapping with a 'name' key, got 'tiny'"),
    ("model: {name: gpt, preset: tiny, mlp: gelu}",
     "x.yaml: model.mlp: expected one of 'relu2', 'gated_relu2' or 'swiglu', got 'gelu'"),
    ("model: {name: gpt, preset: tiny, dropout: 1.5}",
     "x.yaml: model.dropout: expected a number >= 0.0 and < 1.0, got 1.5"),
    ("model: {name: gpt, preset: tiny, n_head: 5}", "x.yaml: model.n_head: d_model (64) must be divisible by n_head (5)"),
    ("model: {name: gpt, preset: tiny, d_model: 0}", "x.yaml: model.d_model: expected an integer > 0, got 0"),
]


@pytest.mark.parametrize("body,expected", BAD, ids=[b for b, _ in BAD])
def test_bad_config_message(tmp_path, registry, body, expected):
    assert errors_of(tmp_path, registry, body) == [expected]


def test_missing_section(tmp_path, registry):
    body = "tokenizer: {name: bytes}\ndata: {name: textfile, path: a.txt}\n"
    assert errors_of(tmp_path, registry, body, base="") == ["x.yaml: model: required key is missing"]


def test_every_problem_is_reported(tmp_path, registry):
    lines = errors_of(tmp_path, registry, "optim: {lr: fast}\ntrainer: {max_steps: -1, batch_sise: 3}")
    assert sorted(lines) == sorted([
        "x.yaml: optim.lr: expected a number > 0, got 'fast'",
        "x.yaml: trainer.max_steps: expected an integer > 0, got -1",
        "x.yaml: trainer.batch_sise: unknown key (did you mean 'batch_size'?)",
    ])


def test_override_errors_name_the_command_line(tmp_path, registry):
    assert errors_of(tmp_path, registry, "", ["optim.lr=fast"]) == [
        "command line: optim.lr: expected a number > 0, got 'fast'"]
    assert errors_of(tmp_path, registry, "", ["optim"]) == ["override 'optim': expected KEY.PATH=VALUE"]


def test_errors_name_the_file_that_set_the_key(tmp_path, registry):
    (tmp_path / "parent.yaml").write_text(BASE + "optim: {lr: fast}\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: parent.yaml\ntrainer: {max_steps: 0}\n")
    with pytest.raises(UserError) as exc:
        load_config(child, [], registry)
    assert sorted(str(exc.value).splitlines()) == sorted([
        f"{tmp_path / 'parent.yaml'}: optim.lr: expected a number > 0, got 'fast'",
        f"{child}: trainer.max_steps: expected an integer > 0, got 0",
    ])


@pytest.mark.parametrize("text,expected", [
    ("model: [unclosed", "x.yaml: invalid YAML (line 1, column 17): expected ',' or ']', but got '<stream end>'"),
    ("- a\n- b\n", "x.yaml: expected a mapping of config keys at the top, got list"),
    ("extends: nowhere.yaml\n", "x.yaml: extends: file not found: nowhere.yaml"),
    ("extends: x.yaml\n", "x.yaml: extends: circular chain"),
])
def test_unreadable_configs(tmp_path, registry, text, expected):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        load_config(path, [], registry)
    assert str(exc.value).replace(str(tmp_path) + "/", "").startswith(expected)


def test_missing_config_file(tmp_path, registry):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", [], registry)


def test_extends_several_levels_and_overrides(tmp_path, registry):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text(BASE + "optim: {lr: 1.0e-3, weight_decay: 0.2}\ntrainer: {max_steps: 50}\n")
    (tmp_path / "sub" / "b.yaml").write_text("extends: ../a.yaml\noptim: {lr: 2.0e-3}\nname: b\n")
    (tmp_path / "sub" / "c.yaml").write_text("extends: b.yaml\ntrainer: {batch_size: 3}\n")
    cfg = load_config(tmp_path / "sub" / "c.yaml", ["optim.lr=3e-4", "trainer.grad_accum=2", "seed=9"], registry)
    _, optim = cfg.component("optim")
    assert (optim.lr, optim.weight_decay) == (3e-4, 0.2)  # override > b > a; a's weight_decay kept
    assert (cfg.trainer.max_steps, cfg.trainer.batch_size, cfg.trainer.grad_accum) == (50, 3, 2)
    assert cfg.name == "b" and cfg.seed == 9


def test_overrides_are_typed(tmp_path, registry):
    path = tmp_path / "x.yaml"
    path.write_text(BASE)
    cfg = load_config(path, ["optim.betas=[0.8, 0.9]", "trainer.grad_clip=null", "trainer.compile=false"], registry)
    assert cfg.component("optim")[1].betas == (0.8, 0.9)
    assert cfg.trainer.grad_clip is None and cfg.trainer.compile is False


def test_resolved_config_round_trips(tmp_path, registry):
    path = tmp_path / "x.yaml"
    path.write_text(BASE + "schedule: {name: wsd}\n")
    cfg = load_config(path, [], registry)
    again = tmp_path / "resolved.yaml"
    again.write_text(cfg.to_yaml())
    assert load_config(again, [], registry).to_dict() == cfg.to_dict()
    assert cfg.to_dict()["model"]["d_model"] == 64  # the preset is expanded


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(BASE + "optim: {lr: fast}\n")
    result = run_main("config", "validate", path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"{path}: optim.lr: expected a number > 0, got 'fast'"
    assert "Traceback" not in result.stderr
    result = run_main("config", "show", path, "optim.lr=0.5")
    assert result.returncode == 0 and "lr: 0.5" in result.stdout
