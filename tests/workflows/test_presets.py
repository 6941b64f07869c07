"""The workflow-model presets: registered by the workflows plugin, known wherever a config is
validated against the registry."""

import pytest
import torch
from pydantic import ValidationError
from support import SHAKESPEARE

from trainframe.config import load_config
from trainframe.errors import UserError
from trainframe.model import ModelConfig, build_model
from trainframe.plugins import current


def model_config(**fields) -> ModelConfig:
    return ModelConfig.model_validate(fields, context={"registry": current().registry})


def test_workflow_presets_come_from_the_plugin():
    presets = current().registry.model_presets
    assert {"small", "medium-small", "medium-512", "medium", "large-512", "large"} <= set(presets)
    with pytest.raises(ValidationError, match="unknown model preset 'small'"):
        ModelConfig(preset="small")  # without the registry: the core's presets only


def test_explicit_fields_override_preset():
    cfg = model_config(preset="small", d_model=512, n_head=8, dropout=0.0)
    assert (cfg.d_model, cfg.n_head, cfg.n_layer, cfg.dropout, cfg.context) == (512, 8, 8, 0.0, 512)
    # for fields other than n_kv_head, mlp_hidden, vocab_size, bitlinear_group_size null means "not given"
    assert model_config(preset="small", d_model=None).d_model == 384


def test_unknown_preset_names_the_closest(tmp_path):
    with pytest.raises(ValidationError) as info:
        model_config(preset="smal")
    assert "unknown model preset 'smal' (did you mean 'small'?); known presets: tiny, " in str(info.value)
    path = tmp_path / "x.yaml"
    path.write_text(f"model: {{name: gpt, preset: smal}}\ntokenizer: {{name: bytes}}\n"
                    f"data: {{name: textfile, path: {SHAKESPEARE}}}\n")
    with pytest.raises(UserError) as exc:
        load_config(path, [], current().registry)
    line = str(exc.value).replace(str(path), "x.yaml")
    assert line.startswith("x.yaml: model.preset: unknown model preset 'smal' (did you mean 'small'?)")


def test_small_is_about_20m():
    with torch.device("meta"):
        small = build_model(model_config(preset="small"), 1000)
    assert small.num_params() == 20_447_232  # ~20M, as the issue asks
    assert small.num_block_params() == 8 * 12 * 384 * 384
    assert not small.config.bitlinear
