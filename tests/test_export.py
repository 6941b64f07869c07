"""trainframe export: files, exact reload (full and packed ternary), safe --out handling."""

import json

import pytest
import torch
from support import train_tiny_run

from trainframe.cli import main
from trainframe.runs import load_run_model
from trainframe.export import export_run, load_export


def train_run(tmp_path, name, *overrides):
    return train_tiny_run(tmp_path, name, *overrides, steps=12, save_every=6)


@pytest.fixture(scope="module")
def bit_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("bit"), "run", "model.bitlinear=true", "model.bitlinear_group_size=16",
                     "model.tie_embeddings=true")


def test_export_files_and_exact_reload(bit_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(bit_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BitLinear matrices take" in printed and "smaller" in printed
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "model.ternary.safetensors",
                                               "run_config.yaml", "README.md"}
    manifest = json.loads((out / "config.json").read_text())
    assert manifest["architecture"] == "gpt" and manifest["preset"] == "tiny"
    assert manifest["model"]["bitlinear"] and manifest["model"]["vocab_size"] == 258
    assert manifest["checkpoint"]["step"] == 12
    t = manifest["ternary"]
    # 2 bits per weight + one float32 scale per 16 weights = 4 bits per weight
    assert t["bits_per_weight"] == pytest.approx(4.0) and t["packed_bytes"] * 4 == t["bf16_bytes"]
    assert "# run" in (out / "README.md").read_text()

    _, _, model = load_run_model(bit_run, "latest", "cpu")
    _, _, full = load_export(out)
    _, _, packed = load_export(out, packed=True)
    assert packed.lm_head.weight is packed.wte.weight  # tied weights stored once, tied again on load
    x = torch.randint(0, 258, (2, 32))
    with torch.no_grad():
        want = model(x)
        assert torch.equal(full(x), want)
        assert torch.equal(packed(x), want)  # the packed ternary weights are exactly the trained forward


def test_generate_same_from_run_and_export(bit_run, tmp_path, capsys):
    out = tmp_path / "export"
    export_run(bit_run, "best", out)
    texts = []
    for source in (bit_run, out):
        assert main(["generate", str(source), "--prompt", "To be", "--max-tokens", "20", "--temperature", "0.9",
                     "--seed", "3", "--device", "cpu", *(["--checkpoint", "best"] if source == bit_run else [])]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and "To be" in texts[0]


def test_full_precision_model_has_no_packed_file(tmp_path):
    run = train_run(tmp_path, "plain")
    out = tmp_path / "export"
    export_run(run, "latest", out, dtype="bfloat16")
    assert not (out / "model.ternary.safetensors").exists()
    _, _, model = load_export(out)
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert main(["eval", str(out), "--packed"]) == 2


def test_out_directory_safety(bit_run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", str(bit_run), "--out", str(mine), "--force"]) == 2
    assert "not a trainframe export" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    out = tmp_path / "export"
    assert main(["export", str(bit_run), "--out", str(out), "--checkpoint", "6"]) == 0
    assert main(["export", str(bit_run), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["checkpoint"]["step"] == 6
    assert main(["export", str(bit_run), "--out", str(out), "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["checkpoint"]["step"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "mine"]  # no temp or old dirs left

    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert main(["export", str(bit_run), "--out", str(tmp_path / "x"), "--checkpoint", "7"]) == 2
    assert main(["generate", str(out), "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint for step 7" in err and "export of a single checkpoint" in err
    assert not (tmp_path / "x").exists()


def test_damaged_export_is_one_line(bit_run, tmp_path, capsys):
    out = tmp_path / "export"
    export_run(bit_run, "latest", out)
    (out / "model.safetensors").write_bytes(b"\x00" * 10)
    assert main(["eval", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.safetensors: unreadable safetensors file" in err and len(err.splitlines()) == 1
