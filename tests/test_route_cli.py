"""lr-onnx route from the command line: table and JSON output, usage errors, damaged bundles, the console script."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import REPO
from lr_onnx.cli import main
from lr_onnx.runtime.errors import BundleError
from lr_onnx.runtime.router import DEFAULT_BUNDLE, Router

EXAMPLES = REPO / "assets" / "examples"


def test_cli_table_json_and_usage_errors(runner):
    res = runner.invoke(main, ["route", str(EXAMPLES / "receipt.jpg"), "What is the total?"])
    assert res.exit_code == 0 and "chosen:" in res.output and res.output.count("\n* ") + res.output.startswith("*") == 1
    js = json.loads(runner.invoke(main, ["route", "What is 2 + 2?", "--json", "--explain"]).output)
    assert js["model"] == js["candidates"][0]["name"] and "closest_slices" in js["explain"]
    for bad in (
        ["route", "q", "--lambda", "-1"],
        ["route", "q", "--lambda", "nan"],
        ["route"],
        ["route", "q", "--provider", "gpu"],
    ):
        assert runner.invoke(main, bad).exit_code == 2
    assert runner.invoke(main, ["route", "q", "--models", "nope"]).exit_code == 2  # a usage error
    short = runner.invoke(main, ["route", "What is 2 + 2?", "-b", str(DEFAULT_BUNDLE), "--json"])  # -b: --bundle
    assert short.exit_code == 0 and json.loads(short.output)["model"] == js["model"]
    assert runner.invoke(main, ["route", "q", "-b", str(EXAMPLES)]).exit_code != 0  # and it is read: not a bundle


def test_corrupted_and_newer_bundles(tmp_path, runner):
    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    with open(b / "router.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="router.onnx fails its sha256 check"):
        Router.load(b)
    res = runner.invoke(main, ["route", "hi there", "--bundle", str(b)])
    assert res.exit_code == 1 and "sha256" in res.output
    shutil.copyfile(DEFAULT_BUNDLE / "router.onnx", b / "router.onnx")
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="newer than this lr-onnx supports"):
        Router.load(b)
    with pytest.raises(BundleError, match="no such bundle"):
        Router.load(tmp_path / "nothing")


def test_console_script_routes_an_example():
    exe = shutil.which("lr-onnx")
    assert exe
    out = subprocess.run(
        [exe, "route", str(EXAMPLES / "chart.png"), "What is the value shown?"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "chosen:" in out.stdout
