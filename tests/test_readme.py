"""Everything the README shows runs as shown (issue 23): its Python and shell blocks, its config, its commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)]
GATEWAY = "# against a running gateway"
INSTALL = ("pip install", "python3 -m venv")


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _runnable(lang: str) -> list[str]:
    return [
        code
        for kind, code in BLOCKS
        if kind == lang and not code.startswith(GATEWAY) and not any(x in code for x in INSTALL)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("code", _runnable("python"), ids=lambda c: c.splitlines()[0][:40])
def test_readme_python_blocks_run(code):
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=_env(), timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("code", _runnable("bash"), ids=lambda c: c.splitlines()[0][:40])
def test_readme_shell_blocks_run(code):
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], cwd=REPO, capture_output=True, text=True, env=_env(), timeout=300
    )
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]


def test_readme_gateway_examples_run_against_a_gateway():
    pytest.importorskip("uvicorn")
    from lr_onnx.runtime.router import Router
    from lr_onnx.serve.app import create_app
    from lr_onnx.serve.config import ServeConfig
    from lr_onnx.serve.standin import BackgroundServer

    blocks = [(kind, code) for kind, code in BLOCKS if code.startswith(GATEWAY)]
    assert blocks, "the README shows how to call the gateway"
    with BackgroundServer(create_app(Router.load(), ServeConfig())) as s:
        for kind, code in blocks:
            code = code.replace("http://127.0.0.1:8080", s.url)
            if kind == "bash":
                if not shutil.which("curl"):
                    continue
                out = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=60).stdout
                assert '"model"' in out and '"candidates"' in out, out
            else:  # the OpenAI client example needs an upstream and the openai package: it must at least parse
                compile(code, "README", "exec")


def test_readme_config_example_is_a_valid_config(tmp_path):
    from lr_onnx.serve.config import load_config

    toml = [code for kind, code in BLOCKS if kind == "toml"]
    assert toml
    for i, code in enumerate(toml):
        (tmp_path / f"c{i}.toml").write_text(code)
        assert load_config(tmp_path / f"c{i}.toml").models


def test_readme_command_table_matches_the_cli(runner):
    from lr_onnx.cli import main

    listed = set(re.findall(r"^\| `lr-onnx ([a-z-]+)", README, re.M))
    commands = runner.invoke(main, ["--help"]).output.split("Commands:", 1)[1]
    helped = set(re.findall(r"^  ([a-z][a-z-]*)\s", commands, re.M))
    assert listed == helped, listed ^ helped
