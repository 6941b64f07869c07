"""The wandb and mlflow loggers, offline: config, metrics by step, samples, resume into the same
tracker run without logging a step twice; a missing package is one line naming the extra."""

import glob
import importlib.util
import json
import struct

import pytest

from trainframe.cli import main

# 12 steps with checkpoints at 5 and 10, evals at 6 and 12, a sample at the end; then the later
# checkpoints are removed and the run resumed from step 5 to 15: steps 6-12 are redone.
FIRST = ["trainer.max_steps=12", "trainer.save_every=5", "trainer.eval_every=6", "trainer.sample_tokens=4"]


def train_and_resume(tiny_config, run, logger: str) -> None:
    assert main(["train", str(tiny_config), "--run-dir", str(run), *FIRST,
                 f"loggers=[{{name: jsonl}}, {logger}]"]) == 0
    for name in ("step_00000010.pt", "step_00000012.pt"):
        (run / "checkpoints" / name).unlink()
    assert main(["resume", str(run), "trainer.max_steps=15"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 16))  # the jsonl rule: redone rows replace


@pytest.mark.slow
def test_missing_package_names_the_extra(tiny_config, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "mlflow")
                        else real(name, *a))
    for name in ("wandb", "mlflow"):
        run = tmp_path / name
        assert main(["train", str(tiny_config), "--run-dir", str(run), f"loggers=[{{name: {name}}}]"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"logger '{name}': the {name} package is not installed: pip install 'trainframe[{name}]'"
        assert not run.exists()


def wandb_records(path):
    """The records of an offline run file (``run-ID.wandb``: a LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        buf = chunk if kind in (1, 2) else buf + chunk  # full / first, or middle / last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
    return records


def wandb_history(path) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in wandb_records(path) if r.WhichOneof("record_type") == "history"]


def test_wandb_offline(tiny_config, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train_and_resume(tiny_config, run, "{name: wandb, project: tf-test, tags: [t1]}")
    run_id = json.loads((run / "wandb.json").read_text())["run_id"]
    files = sorted(glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2 and all(f.endswith(f"run-{run_id}.wandb") for f in files)  # one run, two sessions
    first, second = (wandb_history(f) for f in files)
    loss = lambda rows: [r["_step"] for r in rows if "train/loss" in r]  # noqa: E731
    assert loss(first) == list(range(1, 13)) and loss(second) == [13, 14, 15]  # 6-12 not logged again
    assert [r["_step"] for h in (first, second) for r in h if "val/val_loss" in r] == [6, 12, 15]
    assert [r["_step"] for h in (first, second) for r in h if "samples/_type" in r] == [12, 15]
    start = next(r.run for r in wandb_records(files[0]) if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json) for u in start.config.update}
    assert start.display_name == "run" and list(start.tags) == ["t1"] and start.project == "tf-test"
    assert config["trainer"]["max_steps"] == 12 and config["model"]["d_model"] == 32


def test_mlflow_file_store(tiny_config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses file stores without it
    uri = f"file:{tmp_path / 'store'}"
    run = tmp_path / "run"
    train_and_resume(tiny_config, run, f"{{name: mlflow, experiment: tf-test, tracking_uri: '{uri}', tags: {{a: b}}}}")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tf-test").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == json.loads((run / "mlflow.json").read_text())["run_id"]
    info = runs[0]
    assert info.info.run_name == "run" and info.data.tags["a"] == "b" and info.info.status == "FINISHED"
    assert info.data.params["trainer.max_steps"] == "12" and info.data.params["model.d_model"] == "32"
    history = lambda key: sorted(m.step for m in client.get_metric_history(info.info.run_id, key))  # noqa: E731
    assert history("train/loss") == list(range(1, 16))  # each step once: 6-12 were not logged again
    assert history("val/val_loss") == [6, 12, 15]
    samples = [a.path for a in client.list_artifacts(info.info.run_id, "samples")]
    assert samples == ["samples/step_00000012.txt", "samples/step_00000015.txt"]
    config = client.download_artifacts(info.info.run_id, "config.yaml", str(tmp_path))
    assert "max_steps: 15" in open(config).read()  # rewritten on resume
