"""`lr-onnx data ...` through click's CliRunner and as the installed console script."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

from conftest import DCROUTER, SHARED_DATA, rec, write_native
from lr_onnx.cli import main


@pytest.mark.shared_data("dcrouter")
def test_check_json_has_the_documented_keys(runner):
    res = runner.invoke(main, ["data", "check", str(DCROUTER), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    for key in ("queries", "models", "best_single", "oracle", "per_model", "per_split", "coverage", "datasets"):
        assert key in rep
    assert rep["queries"] == 6108 and rep["per_split"]["test"]["best_single"]["score"] == pytest.approx(0.5626, 1e-4)
    assert set(rep["best_single"]) == {"name", "score", "cost"}
    assert "properties" not in rep  # dcrouter has no difficulty metadata


@pytest.mark.shared_data("vqarad")
def test_check_measures_the_demo_design_properties_only_where_there_is_difficulty_metadata(runner):
    """vqarad's queries carry metadata (organ, answer type) but no difficulty level: the demo's design checks
    (difficulty gap, generic questions, text-only share) do not apply and must not print as FAIL."""
    res = runner.invoke(main, ["data", "check", str(SHARED_DATA / "vqarad")])
    assert res.exit_code == 0 and "[test] best single gpt-4o" in res.output
    assert "routing-benchmark properties" not in res.output and "FAIL" not in res.output


@pytest.mark.shared_data("dcrouter")
def test_check_table_is_readable(runner):
    res = runner.invoke(main, ["data", "check", str(DCROUTER)])
    assert res.exit_code == 0
    assert "[test] best single llama-3.1-nemotron-51b-instruct 0.5626" in res.output
    assert "every model has an outcome on every query" in res.output


def test_check_flags_a_dataset_train_would_refuse(runner, tmp_path):
    """Model b's outcomes have no cost (null cost: no outcome), so it has nothing to be profiled on: the data is valid,
    `train` would refuse it, and `check` says so up front (`trainable` in --json)."""
    rows = [rec(i, outcomes={"a": {"score": 1.0, "cost": 0.1}, "b": {"score": 1.0, "cost": None}}) for i in range(30)]
    d = write_native(tmp_path / "d", rows)
    res = runner.invoke(main, ["data", "check", str(d)])
    assert res.exit_code == 0 and "note: lr-onnx train would refuse this dataset" in res.output
    assert "outcome for b (0 training outcomes)" in res.output
    rep = json.loads(runner.invoke(main, ["data", "check", str(d), "--json"]).output)
    assert rep["trainable"]["ok"] is False
    good = json.loads(
        runner.invoke(
            main, ["data", "check", str(write_native(tmp_path / "g", [rec(i) for i in range(30)])), "--json"]
        ).output
    )
    assert good["trainable"] == {"ok": True, "reason": None}


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda p: write_native(p, [rec(0)], raw_lines=["{oops"]), r"queries.jsonl:2: malformed JSON"),
        (lambda p: write_native(p, [rec(0), rec(0)]), r"duplicate id 'q0'"),
        (lambda p: p, "no such dataset folder"),
    ],
)
def test_bad_data_is_one_line_exit_1(runner, tmp_path, make, pattern):
    target = make(tmp_path / "d")
    res = runner.invoke(main, ["data", "check", str(target)])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    import re

    assert re.search(pattern, lines[0]) and "Traceback" not in res.output


def test_usage_errors_exit_2(runner, tmp_path):
    assert runner.invoke(main, ["data", "demo", str(tmp_path / "x"), "--n", "3"]).exit_code == 2
    assert runner.invoke(main, ["data", "check"]).exit_code == 2
    assert runner.invoke(main, ["data", "nope"]).exit_code == 2


def test_every_help_page_renders(runner):
    for args in (
        ["--help"],
        ["data", "--help"],
        ["data", "check", "--help"],
        ["data", "demo", "--help"],
        ["data", "convert", "--help"],
        ["data", "convert", "mmr", "--help"],
        ["data", "convert", "vl-routerbench", "--help"],
    ):
        res = runner.invoke(main, args)
        assert res.exit_code == 0 and "Usage:" in res.output
    assert "SIMULATED" in runner.invoke(main, ["data", "demo", "--help"]).output


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.shared_data("mllm-skills")
def test_demo_is_deterministic_and_independent_of_workers(tmp_path):
    from lr_onnx.export.data.demo import build_demo

    build_demo(tmp_path / "a", n=120, seed=3, workers=1, progress=False)
    build_demo(tmp_path / "b", n=120, seed=3, workers=2, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    build_demo(tmp_path / "c", n=120, seed=4, workers=1, progress=False)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_demo_needs_the_skills_table_and_says_where(runner, tmp_path):
    res = runner.invoke(
        main, ["data", "demo", str(tmp_path / "out"), "--n", "60", "--skills", str(tmp_path / "no.json")]
    )
    assert res.exit_code == 1 and "no.json: no such file" in res.output and "mllm-skills" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.shared_data("mllm-skills")
def test_demo_refuses_to_overwrite(runner, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    res = runner.invoke(main, ["data", "demo", str(tmp_path / "out"), "--n", "60"])
    assert res.exit_code == 1 and "already exists" in res.output
    assert (tmp_path / "out" / "keep").read_text() == "x"


@pytest.mark.slow
@pytest.mark.shared_data("mllm-skills")
def test_demo_2000_has_the_fair_routing_properties(tmp_path):
    """The issue's acceptance command, through the real console script."""
    exe = shutil.which("lr-onnx")
    assert exe, "the console script must be installed (pip install -e .)"
    out = tmp_path / "demo"
    subprocess.run([exe, "data", "demo", str(out), "--n", "2000"], check=True, capture_output=True)
    rep = json.loads(
        subprocess.run([exe, "data", "check", str(out), "--json"], check=True, capture_output=True, text=True).stdout
    )
    props = rep["properties"]
    failing = [k for k, v in props.items() if not v["holds"]]
    assert failing == [], {k: props[k] for k in failing}
    assert len(rep["models"]) >= 8 and len(rep["datasets"]) >= 7
    # every query carries a correct answer read off its rendering
    rows = [json.loads(ln) for ln in (out / "queries.jsonl").read_text().splitlines()]
    assert all(r["meta"]["answer"] != "" for r in rows)
    readme = (out / "README.md").read_text()
    assert "SIMULATED" in readme and "Calibration" in readme
    calib = json.loads((out / "calibration.json").read_text())
    for m, fams in calib["targets"].items():
        for f, t in fams.items():
            assert abs(calib["realised"][m][f] - t) < 0.08, (m, f)
