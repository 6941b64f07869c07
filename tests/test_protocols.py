"""The contract in code (trainframe.protocols): the built-in components satisfy their Protocols, a
component without an optional capability is told so through the isinstance checks that replaced
the hasattr probes, and ``step`` means the same in every hook."""

import json
import re
import types

import pytest
import torch
from support import REPO, TINY_YAML

import trainframe
from trainframe.config import load_config
from trainframe.engine.build import build_trainer
from trainframe.engine.loop import set_training_memory
from trainframe.errors import UserError
from trainframe.sampling import sample_documents
from trainframe.plugins import load_plugins


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def build(plugins, kind, name, **keys):
    c = plugins.registry.get(kind, name)
    return c.factory, c.config(**keys)


class PlainTokenizer:
    """A third party's smallest tokenizer: the required members only."""

    pad_id = 0

    def encode(self, text):
        return [1 + b % 9 for b in text.encode()]

    def decode(self, ids):
        return "".join(map(str, ids))

    def vocab_size(self):
        return 10


def test_builtin_components_satisfy_their_protocols(plugins):
    factory, cfg = build(plugins, "tokenizer", "bytes")
    tok = factory(cfg)
    assert isinstance(tok, trainframe.Tokenizer) and not isinstance(tok, trainframe.SupportsAllowedNext)
    factory, cfg = build(plugins, "model", "gpt", preset="tiny", d_model=32, n_layer=2, n_head=2, context=16)
    model = factory(cfg, vocab_size=tok.vocab_size())
    for protocol in (trainframe.Model, trainframe.SupportsGenerate, trainframe.SupportsFlopsPerToken,
                     trainframe.SupportsSummary, trainframe.SupportsTrainingMemory):
        assert isinstance(model, protocol), protocol.__name__
    assert model.config.context == 16 and len(list(model.blocks)) == 2  # HasBlocks: what FSDP2 shards
    for name in plugins.registry.names("phases"):  # every controller, first-party plugins' included
        factory, cfg = build(plugins, "phases", name)
        assert isinstance(factory(cfg), trainframe.Controller), name


def test_a_dataset_is_a_dataset_and_chars_per_token_is_optional(plugins, tiny_config):
    trainer = build_trainer(load_config(tiny_config, [], plugins.registry), plugins, tiny_config.parent / "run")
    assert isinstance(trainer.dataset, trainframe.Dataset)
    assert not isinstance(trainer.dataset, trainframe.HasCharsPerToken)
    assert "val_bpc" not in trainer.evaluate()
    trainer.dataset.chars_per_token = 2.0  # a dataset that knows its text: bits per character too
    assert isinstance(trainer.dataset, trainframe.HasCharsPerToken) and "val_bpc" in trainer.evaluate()


def test_a_tokenizer_without_allowed_next_cannot_sample_constrained(plugins):
    tok = PlainTokenizer()
    assert isinstance(tok, trainframe.Tokenizer)
    assert not any(isinstance(tok, p) for p in (trainframe.SupportsAllowedNext, trainframe.SupportsDecodeFile,
                                                 trainframe.SupportsSave, trainframe.SupportsFingerprint))
    factory, cfg = build(plugins, "model", "gpt", preset="tiny", d_model=32, n_layer=2, n_head=2, context=16)
    model = factory(cfg, vocab_size=10)
    with pytest.raises(UserError, match="has no allowed_next"):
        list(sample_documents(model, tok, [], [1], 1, max_tokens=4, constrained=True))
    tok.allowed_next = lambda prefix: torch.ones(10, dtype=torch.bool)
    assert isinstance(tok, trainframe.SupportsAllowedNext)
    assert len(list(sample_documents(model, tok, [], [1], 2, max_tokens=4, constrained=True))) == 2


def test_a_model_without_training_memory_refuses_the_options():
    class Plain(torch.nn.Module):
        def forward(self, inputs, targets):
            return torch.zeros(())

    t = types.SimpleNamespace(activation_checkpointing="none", loss_chunk=None)
    set_training_memory(Plain(), t)  # the defaults need nothing
    with pytest.raises(UserError, match="no set_training_memory"):
        set_training_memory(Plain(), types.SimpleNamespace(activation_checkpointing="blocks", loss_chunk=None))


class Steps:
    def __init__(self):
        self.start, self.end, self.changes = [], [], []

    @trainframe.hookimpl
    def trainframe_step_start(self, trainer, step, phase):
        assert trainer.step == step - 1
        self.start.append((step, phase))

    @trainframe.hookimpl
    def trainframe_step_end(self, trainer, step):
        assert trainer.step == step
        self.end.append(step)

    @trainframe.hookimpl
    def trainframe_phase_change(self, step, old, new):
        self.changes.append((step, old, new))


class EveryThird(trainframe.PhaseController):
    def decide(self, step):  # step: the 0-based index, as for the schedule
        return (trainframe.Phase.PREDICT, "every third") if step % 3 == 2 else (trainframe.Phase.FULL, "train")


def test_step_means_the_same_in_every_hook(tmp_path):
    def trainframe_register(registry):
        registry.add("phases", "every-third", lambda cfg: EveryThird(), trainframe.ComponentConfig)

    module = types.ModuleType("every_third")
    module.trainframe_register = trainframe.hookimpl(trainframe_register)
    plugins = load_plugins(extra=[("every_third", module)])
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    overrides = ["phases={name: every-third}", "trainer.max_steps=6", "trainer.save_every=0"]
    trainer = build_trainer(load_config(path, overrides, plugins.registry), plugins, tmp_path / "run")
    steps = Steps()
    trainer.listeners.append(steps)
    trainer.fit(finish=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    # The first step is step 1 everywhere: step_start, step_end and the metrics row.
    assert [s for s, _ in steps.start] == steps.end == [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [p for _, p in steps.start] == [r["phase"] for r in rows] == ["full", "full", "predict"] * 2
    # A phase change names the step that starts the new phase, as that step's step_start does.
    assert steps.changes == [(3, "full", "predict"), (4, "predict", "full"), (6, "full", "predict")]


def test_only_the_engine_fires_phase_change():
    """``Trainer.train_step`` calls the hook, when the phase ``decide`` returns differs from the
    previous step's; nothing else calls it."""
    calls = re.compile(r"\.trainframe_phase_change\(")
    firing = sorted(str(f.relative_to(REPO)) for root in ("src", "plugins", "examples", "benchmarks")
                    for f in (REPO / root).rglob("*.py") if calls.search(f.read_text()))
    assert firing == ["src/trainframe/engine/loop.py"]
