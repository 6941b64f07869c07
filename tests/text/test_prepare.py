"""`trainframe data prepare`: FineWeb-Edu/TinyStories layouts, bad rows, idempotence, kill and resume."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import kill_parent_alone, own_process_group
from textdata import (  # noqa: F401 (fixtures)
    FINEWEB_COLUMNS,
    REPO,
    SHAKESPEARE,
    cli,
    hub_free_env,
    hub_offline,
    trained_bpe,
    write_config,
)
from trainframe_text.bpe import load_bpe

from trainframe.data.shards import open_shards
from trainframe.fileio import TEMP_GLOB


def fineweb_parquet(path, texts):
    cols = {c: [f"{c}-{i}" for i in range(len(texts))] for c in FINEWEB_COLUMNS}
    cols["text"] = texts
    cols["score"] = [3.1] * len(texts)
    pq.write_table(pa.table(cols), path)


def tinystories_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_prepare_writes_shards_and_manifest_and_counts_bad_rows(tmp_path, bpe_path, capsys):
    stories = [{"text": "Once upon a time there was a little cat."}, {"text": ""}, {"text": None},
               {"text": "The dog ran to the park and played all day."}, {"text": 17}, {"text": "  \n"}]
    tinystories_jsonl(tmp_path / "stories.jsonl", stories)
    web = ["Photosynthesis turns light into chemical energy.", "Water boils at 100 degrees Celsius."]
    fineweb_parquet(tmp_path / "web.parquet", web)
    inputs = {p: p.read_bytes() for p in (tmp_path / "stories.jsonl", tmp_path / "web.parquet")}
    config = write_config(tmp_path, [{"files": [str(tmp_path / "web.parquet")], "name": "web", "weight": 0.6},
                                     {"files": [str(tmp_path / "*.jsonl")], "name": "stories", "weight": 0.4}],
                          bpe_path)
    assert cli("data", "prepare", config, "--workers", 1) == 0
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    tok = load_bpe(bpe_path)
    assert manifest["tokenizer"] == tok.fingerprint() and manifest["dtype"] == "uint16"
    web_m, stories_m = manifest["sources"]
    assert (web_m["name"], web_m["rows"], web_m["bad_rows"], web_m["weight"]) == ("web", 2, 0, 0.6)
    assert (stories_m["rows"], stories_m["bad_rows"]) == (2, 4)  # empty, null, a number, whitespace
    index, arrays = open_shards(tmp_path / "data" / web_m["dir"])
    tokens = np.concatenate(arrays)
    expected = [t for text in web for t in [*tok.encode(text), tok.eos_id]]
    assert tokens.tolist() == expected and tokens.dtype == np.uint16
    assert index["bytes"] == sum(len(t.encode()) for t in web)
    assert {p: p.read_bytes() for p in inputs} == inputs  # sources untouched
    # A second run does nothing and says so.
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*")}
    capsys.readouterr()
    assert cli("data", "prepare", config) == 0
    assert "already prepared" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*")} == stamp


def test_wrong_column_and_no_text_are_one_line_errors(tmp_path, bpe_path, capsys):
    tinystories_jsonl(tmp_path / "s.jsonl", [{"story": "x"}])
    config = write_config(tmp_path, [{"files": [str(tmp_path / "s.jsonl")]}], bpe_path)
    assert cli("data", "prepare", config, "--workers", 1) == 2
    assert capsys.readouterr().err.strip() == "data.sources[0].text_field: no column 'text'; columns: story"
    tinystories_jsonl(tmp_path / "s.jsonl", [{"text": ""}])
    assert cli("data", "prepare", config, "--workers", 1) == 2
    assert "data.sources[0]: no text found (1 rows without text in 'text')" in capsys.readouterr().err


def test_uint32_shards_for_large_vocabularies(tmp_path):
    from trainframe_text.prepare import tokenize_chunk

    from trainframe.data.tokenizer import ByteTokenizer

    class WideBytes(ByteTokenizer):  # ids above 65535 need uint32
        eos_id = 70000

        def vocab_size(self):
            return 70001

    stats = tokenize_chunk(str(tmp_path), 0, ["ab"], 0, WideBytes())
    assert stats["tokens"] == 3
    assert np.fromfile(tmp_path / "chunk_00000.bin", dtype=np.uint32).tolist() == [97, 98, 70000]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_prepare_leaves_no_workers_and_resumes_to_the_same_shards(tmp_path, bpe_path, capsys):
    source = {"files": [str(SHAKESPEARE)], "sample_by": "paragraph"}
    config = write_config(tmp_path, [source], bpe_path, chunk_bytes=8192, workers=2)
    proc = subprocess.Popen([sys.executable, "-m", "trainframe", "data", "prepare", str(config)], cwd=REPO,
                            env=hub_free_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    with own_process_group(proc):
        deadline = time.time() + 60
        markers = []
        while time.time() < deadline and len(markers) < 3 and proc.poll() is None:
            markers = list((tmp_path / "data").glob("*/chunk_*.json"))
            time.sleep(0.02)
        kill_parent_alone(proc)
    (src_dir,) = (tmp_path / "data").iterdir()
    assert not (src_dir / "index.json").exists(), "finished before the kill; the test needs more data"
    done_before = len(list(src_dir.glob("chunk_*.json")))
    assert cli("data", "prepare", config, "--workers", 1) == 0
    assert f"{done_before} chunks resumed" in capsys.readouterr().out
    # A clean run elsewhere writes the same tokens.
    clean = write_config(tmp_path, [source], bpe_path, name="clean", chunk_bytes=8192)
    data = tmp_path / "clean-data"
    assert cli("data", "prepare", clean, f"data.dir={data}", "--workers", 1) == 0
    resumed = np.concatenate(open_shards(src_dir)[1])
    fresh = np.concatenate(open_shards(data / src_dir.name)[1])
    assert np.array_equal(resumed, fresh) and resumed.size > 0
    assert not list(src_dir.glob(TEMP_GLOB))


def test_offline_hub_source_is_one_line_and_exit_2(tmp_path, bpe_path, hub_offline, capsys):
    config = write_config(tmp_path, [{"preset": "fineweb-edu"}], bpe_path)
    t0 = time.time()
    assert cli("data", "prepare", config, "--workers", 1) == 2 and time.time() - t0 < 30
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("data.sources[0]: cannot load 'HuggingFaceFW/fineweb-edu' from the Hugging Face hub "
                               "(offline: HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1)")
    assert "point the source at local files: {files: [path/*.parquet], text_field: text}" in lines[0]


def test_row_texts_join_fields_and_reject_bad_values():
    from trainframe_text.sources import SourceConfig, iter_texts

    rows = [{"question": "2+2?", "answer": "4"}, {"question": "x", "answer": None},
            {"question": b"\xff", "answer": "y"}, {"question": "\ud800", "answer": "z"}]
    assert list(iter_texts(rows, ["question", "answer"], "s")) == ["2+2?\n\n4", None, None, None]
    gsm8k = SourceConfig(preset="gsm8k", weight=0.1)
    assert (gsm8k.hf, gsm8k.config, gsm8k.text_field, gsm8k.label) == ("openai/gsm8k", "main",
                                                                       ["question", "answer"], "gsm8k")
