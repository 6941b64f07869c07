"""The workflows corpus: .jsonl.xz / .jsonl.gz read as streams, several paths, corrupt files,
tokenizing in worker processes (identical to one process), resuming from finished chunks."""

import gzip
import json
import lzma
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import REPO, kill_parent_alone, own_process_group
from trainframe_workflows import corpus_cache, dataset
from trainframe_workflows.corpus import iter_texts
from trainframe_workflows.dataset import WorkflowsConfig, build_workflows
from wfdata import CORPUS, LARGE, need_data, need_large

from trainframe.errors import UserError


def sample_lines(path: Path, n: int) -> list[str]:
    """``n`` rows spread over a corpus (so over many repositories), as .jsonl lines."""
    with (lzma.open(path, "rt", encoding="utf-8") if path.suffix == ".xz" else open(path, encoding="utf-8")) as fh:
        lines = [line for line in fh if line.strip()]
    return lines[:: len(lines) // n][:n]


@pytest.fixture(scope="module")
def small_lines():
    need_data()
    return sample_lines(CORPUS, 20)


@pytest.fixture(scope="module")
def large_lines():
    need_large()
    return sample_lines(LARGE, 20)


def write_jsonl(path: Path, lines: list[str]) -> Path:
    text = "".join(lines).encode()
    if path.name.endswith(".xz"):
        path.write_bytes(lzma.compress(text))
    elif path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text))
    else:
        path.write_bytes(text)
    return path


def build(tok, path, cache, **data):
    cfg = WorkflowsConfig(path=path if isinstance(path, list) else str(path), cache_dir=str(cache),
                          **{"workers": 1, **data})
    return build_workflows(cfg, tokenizer=tok, context=64, seed=0)


def entry(cache: Path) -> Path:
    (out,) = [p for p in (cache / "workflows").iterdir() if not p.name.startswith(".")]
    return out


def meta(cache: Path) -> dict:
    return json.loads((entry(cache) / "docs.json").read_text())


def test_compressed_files_read_as_the_plain_jsonl(tok, tmp_path, small_lines):
    plain = write_jsonl(tmp_path / "w.jsonl", small_lines)
    got = {}
    for name in ("w.jsonl", "w.jsonl.xz", "w.jsonl.gz"):
        path = write_jsonl(tmp_path / name, small_lines)
        assert list(iter_texts(path)) == list(iter_texts(plain)) != []
        ds = build(tok, path, tmp_path / name.replace(".", "-"))
        got[name] = (np.asarray(ds.tokens).tobytes(), meta(tmp_path / name.replace(".", "-"))["docs"])
    assert got["w.jsonl.xz"] == got["w.jsonl"] == got["w.jsonl.gz"]
    assert len(got["w.jsonl"][1]) > 15


def test_tokenizer_check_reads_xz(tmp_path, small_lines, capsys):
    from trainframe.cli import main

    path = write_jsonl(tmp_path / "w.jsonl.xz", small_lines)
    assert main(["tokenizer", "check", "--data", str(path), "--json", "--limit", "5"]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["documents"] == 5


def test_a_list_of_paths(tok, tmp_path, small_lines, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", small_lines[:10])
    b = write_jsonl(tmp_path / "b.jsonl.xz", small_lines[10:])
    both = build(tok, [str(a), str(b)], tmp_path / "both")
    assert f"data: {a} + {b}: " in capsys.readouterr().out
    build(tok, a, tmp_path / "a")
    build(tok, b, tmp_path / "b")
    docs = meta(tmp_path / "a")["docs"] + meta(tmp_path / "b")["docs"]
    assert meta(tmp_path / "both")["docs"] == docs  # concatenated, in order
    assert meta(tmp_path / "both")["source"] == [str(a), str(b)]
    tokens = np.concatenate([np.fromfile(entry(tmp_path / x) / "tokens.bin", np.uint16) for x in "ab"])
    assert np.array_equal(np.asarray(both.tokens), tokens)
    # the order is part of the key; a single path still works as a one-element list
    build(tok, [str(b), str(a)], tmp_path / "both")
    assert "tokenized in" in capsys.readouterr().out
    build(tok, [str(a)], tmp_path / "a")
    assert "cached in" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"^data\.path\[1\]: .*missing\.jsonl: no such file"):
        build(tok, [str(a), str(tmp_path / "missing.jsonl")], tmp_path / "c")


def test_an_empty_path_list_is_a_config_error(tmp_path, capsys):
    from trainframe.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name: gpt, preset: tiny}\ntokenizer: {name: schema}\ndata: {name: workflows, path: []}\n")
    assert main(["config", "validate", str(cfg)]) == 2
    assert "data.path" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["truncated.jsonl.xz", "garbage.jsonl.xz", "truncated.jsonl.gz"])
def test_a_corrupt_compressed_file_is_one_line(tok, tmp_path, small_lines, capsys, kind):
    from trainframe.cli import main

    good = write_jsonl(tmp_path / ("w" + kind[kind.index("."):]), small_lines).read_bytes()
    bad = tmp_path / kind
    bad.write_bytes(good[: len(good) // 2] if kind.startswith("truncated") else b"not xz at all\n" * 50)
    expect = r"truncated or corrupt \.(xz|gz) data (after line \d+|at the start) \(.+\)$"
    with pytest.raises(UserError, match=rf"^data\.path: {bad}: {expect}"):
        build(tok, bad, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache" / "workflows").iterdir() if "partial" in p.name or p.is_dir()]
    assert main(["tokenizer", "check", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err


def test_pooled_tokenizing_is_identical_to_one_process(tok, tmp_path, small_lines, monkeypatch, capsys):
    monkeypatch.setattr(corpus_cache, "CHUNK_DOCS", 4)  # 20 documents: 5 chunks
    path = write_jsonl(tmp_path / "w.jsonl", small_lines)
    build(tok, path, tmp_path / "serial", workers=1)
    assert "(1 process)" in capsys.readouterr().out
    build(tok, path, tmp_path / "pooled", workers=2)
    out = capsys.readouterr().out
    assert "(2 worker processes)" in out and "docs/s" in out
    for name in ("tokens.bin", "docs.json"):
        assert (entry(tmp_path / "serial") / name).read_bytes() == (entry(tmp_path / "pooled") / name).read_bytes()
    assert not list((tmp_path / "pooled" / "workflows").glob(".*.partial"))


def test_a_stopped_run_resumes_from_its_finished_chunks(tok, tmp_path, small_lines, monkeypatch, capsys):
    monkeypatch.setattr(corpus_cache, "CHUNK_DOCS", 4)
    path = write_jsonl(tmp_path / "w.jsonl", small_lines)
    build(tok, path, tmp_path / "fresh")
    real = dataset.iter_corpus

    def stopped(*args):  # Ctrl-C after 10 documents: chunks 0 and 1 are done
        for i, item in enumerate(real(*args)):
            if i == 10:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(dataset, "iter_corpus", stopped)
    with pytest.raises(KeyboardInterrupt):
        build(tok, path, tmp_path / "cache")
    (part,) = (tmp_path / "cache" / "workflows").glob(".*.partial")
    assert sorted(p.name for p in part.glob("*.json")) == ["chunk_00000.json", "chunk_00001.json"]
    # mark chunk 0 so that its reuse shows in the result
    marker = json.loads((part / "chunk_00000.json").read_text())
    marker["docs"][0][0] = "reused/" + marker["docs"][0][0]
    (part / "chunk_00000.json").write_text(json.dumps(marker))
    monkeypatch.setattr(dataset, "iter_corpus", real)
    capsys.readouterr()
    build(tok, path, tmp_path / "cache")
    assert "2 of 5 chunks done by an earlier run" in capsys.readouterr().out
    docs, fresh = meta(tmp_path / "cache")["docs"], meta(tmp_path / "fresh")["docs"]
    assert docs[0][0] == "reused/" + fresh[0][0] and docs[1:] == fresh[1:]
    assert (entry(tmp_path / "cache") / "tokens.bin").read_bytes() == (entry(tmp_path / "fresh") / "tokens.bin").read_bytes()
    assert not part.exists()


KILLED_RUN = """
import sys, time
from trainframe_workflows import corpus_cache, dataset
from trainframe_workflows.dataset import WorkflowsConfig, build_workflows
from trainframe_workflows.schema_tokenizer import SchemaTokenizer

corpus_cache.CHUNK_DOCS = 1
real = dataset.iter_corpus
def slow(*args):
    for item in real(*args):
        time.sleep(0.2)
        yield item
dataset.iter_corpus = slow
cfg = WorkflowsConfig(path=sys.argv[1], cache_dir=sys.argv[2], workers=2)
build_workflows(cfg, tokenizer=SchemaTokenizer(), context=64, seed=0)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_run_leaves_no_workers_and_resumes(tok, tmp_path, small_lines, monkeypatch, capsys):
    path = write_jsonl(tmp_path / "w.jsonl", small_lines)
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(path), str(cache)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    with own_process_group(proc):
        deadline = time.time() + 60
        while not list(cache.glob("workflows/.*.partial/chunk_00001.json")):  # the pool is running
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        kill_parent_alone(proc)
    monkeypatch.setattr(corpus_cache, "CHUNK_DOCS", 1)  # the killed run's cut
    build(tok, path, cache)
    assert " of 20 chunks done by an earlier run" in capsys.readouterr().out
    build(tok, path, tmp_path / "fresh")
    assert (entry(cache) / "tokens.bin").read_bytes() == (entry(tmp_path / "fresh") / "tokens.bin").read_bytes()
    assert (entry(cache) / "docs.json").read_bytes() == (entry(tmp_path / "fresh") / "docs.json").read_bytes()


def test_split_keeps_repositories_on_one_side_across_both_corpora(tok, tmp_path, small_lines, large_lines):
    a = write_jsonl(tmp_path / "a.jsonl", small_lines)
    b = write_jsonl(tmp_path / "b.jsonl.xz", large_lines)
    ds = build(tok, [str(a), str(b)], tmp_path / "cache", val_ratio=0.3)
    docs = meta(tmp_path / "cache")["docs"]
    rows = [json.loads(line) for line in small_lines + large_lines]
    by_name = {f"{r['repo']}/{r['path']}": r["repo"] for r in rows}
    assert all(d[1] == by_name[d[0]] for d in docs)  # each document's repository is its row's `repo`
    train = {docs[i][1] for i in ds.train_docs}
    val = {docs[i][1] for i in ds.val_docs}
    assert train and val and not train & val
    small_repos = {json.loads(line)["repo"] for line in small_lines}
    assert (train | val) & small_repos and (train | val) - small_repos  # both corpora are in it
