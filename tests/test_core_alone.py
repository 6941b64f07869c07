"""The core stands alone: with every plugin its own distribution ships disabled, it still trains."""

import json

from support import TINY_YAML, core_plugins, first_party_plugins

from trainframe.config import load_config
from trainframe.engine.build import build_trainer


def test_core_trains_with_first_party_plugins_disabled(tmp_path):
    names = first_party_plugins()
    assert names  # the core test means something only if there are plugins to switch off
    plugins = core_plugins()
    assert {p.name: p.status for p in plugins.info if p.name in names} == {n: "disabled" for n in names}
    owners = {c.plugin for table in plugins.registry.components.values() for c in table.values()}
    assert owners == {"trainframe"}
    assert set(plugins.registry.model_presets) == {"tiny", "tritter-100m", "tritter-500m", "tritter-1b"}

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML)
    cfg = load_config(path, ["trainer.max_steps=6", "trainer.save_every=6"], plugins.registry)
    run_dir = tmp_path / "run"
    trainer = build_trainer(cfg, plugins, run_dir)
    trainer.run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    trainer.fit()

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 for r in rows if "loss" in r)
    assert (run_dir / "checkpoints" / "step_00000006.pt").is_file()
    again = load_config(run_dir / "config.yaml", [], plugins.registry)  # the run's own config reloads
    assert again.to_dict() == cfg.to_dict()


def test_a_plugin_missing_its_extra_names_it():
    from trainframe.plugins import _extra_hint

    class Meta(dict):
        def get_all(self, key):
            return self.get(key)

    class Dist:
        metadata = Meta({"Name": "mydist", "Provides-Extra": ["fast", "test"]})

    class EntryPoint:
        name, dist = "mydist_fast", Dist()

    assert _extra_hint(EntryPoint(), ModuleNotFoundError("No module named 'x'")) == " (pip install 'mydist[fast]')"
    assert _extra_hint(EntryPoint(), ImportError("x")) == ""
    EntryPoint.name = "mydist_other"
    assert _extra_hint(EntryPoint(), ModuleNotFoundError("x")) == ""
