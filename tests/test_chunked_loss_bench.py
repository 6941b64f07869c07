"""benchmarks/chunked_loss.py --tiny on the CPU: four variants, the table, the JSON, the same first loss."""

import importlib.util
import json
import subprocess
import sys

import pytest
from support import REPO


@pytest.mark.slow
def test_tiny_run(tmp_path):  # a process of its own: the figures include its peak RSS
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "benchmarks/chunked_loss.py", "--tiny", "--same-process", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["loss_chunk"], r["activation_checkpointing"]) for r in rows] == [
        (None, "none"), (None, "blocks"), (32, "none"), (32, "blocks")]
    assert all(r["ms_per_step"] > 0 and r["peak_gb"] > 0 and r["memory"] == "cpu peak RSS (VmHWM)" for r in rows)
    assert all(r["first_loss"] == pytest.approx(rows[0]["first_loss"], rel=1e-5) for r in rows)
    table = [line for line in proc.stdout.splitlines() if line.startswith("| tiny |")]
    assert len(table) == 4 and table[0].startswith("| tiny | 2 | whole | none |") and "1.00x" in table[0]


def test_bad_arguments(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("chunked_loss", REPO / "benchmarks" / "chunked_loss.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_:
        script.main(["--tiny", "--loss-chunk", "0", "--out", str(tmp_path / "x.json")])
    assert exit_.value.code == 2 and "--loss-chunk: expected a positive integer, got 0" in capsys.readouterr().err
