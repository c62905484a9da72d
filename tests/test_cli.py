"""The command line: ``ega-infer info`` reports the build, ``ega-infer demo`` serves slates."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from ega_infer.cli import main


def test_info_reports_the_build(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["c_module"] is True
    assert info["torch"]
    if info["cuda_module"] and "EGA_INFER_CUDA_ARCHS" not in os.environ:
        assert info["cuda_archs"] == ["sm_80", "sm_90"]
    elif shutil.which("nvcc") and os.environ.get("EGA_INFER_CUDA", "AUTO").upper() != "OFF":
        pytest.fail("nvcc is on PATH but ega_infer._cuda was not built")


@pytest.mark.parametrize("mode", ["lists", "candidates"])
def test_demo_prints_slates_and_latencies(capsys, mode):
    assert main(["demo", "--requests", "2", "--eval-users", "20", "--mode", mode]) == 0
    out = capsys.readouterr().out
    assert out.count("request user-") == 2 and "ERROR" not in out
    assert "stage latency" in out and "decode" in out
    assert "interest hit rate" in out and "revenue per mille" in out


def test_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "ega_infer", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "c_module" in result.stdout


def test_eval_prints_the_mechanism_table(capsys):
    args = ["eval", "--users", "8", "--redecode-users", "1", "--ascent-steps", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for row in ("engine + payment network", "engine slates, GSP", "engine slates, VCG", "cascade, GSP"):
        assert row in out
    assert main(args + ["--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["engine slates, VCG"]["psi"] < 1e-6
    assert "psi_full" in table["engine + payment network"] and "regret_per_surplus_full" in table["engine slates, GSP"]


def test_bench_writes_json_with_latency_and_throughput(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    args = ["bench", "--batches", "2,3", "--iters", "1", "--batch1-iters", "2", "--items", "300", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    rows = [r for r in result["rows"] if r["provider"] == "engine"]
    assert [r["shape"]["batch"] for r in rows] == [1, 2, 3]
    assert rows[0]["p99_us"] >= rows[0]["median_us"] > 0
    assert {"encode", "decode", "reward", "payment", "total"} <= set(rows[0]["stages_ms"])
    assert all(r["requests_per_s"] > 0 and r["p80_us"] >= r["median_us"] >= r["p20_us"] for r in rows)
    assert result["config"]["preset"] == "tiny" and result["machine"]["name"].startswith("cpu")
    assert out.with_suffix(".png").exists() or "no plot" in capsys.readouterr().out


def test_bench_hf_compares_with_transformers(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # results go to ./bench/results
    assert main(["bench", "--hf", "--hf-beams", "2", "--hf-items", "500"]) == 0
    saved = list((tmp_path / "bench" / "results").glob("hf_beam_search_*.json"))
    assert len(saved) == 1
    rows = {r["provider"]: r for r in json.loads(saved[0].read_text())["rows"] if r["op"] == "beam_search"}
    assert set(rows) == {"transformers", "engine", "engine_with_trie_build"}
    assert rows["engine"]["same_items_in_order"] and rows["engine"]["speedup_vs_transformers"] > 0
