"""The serving side never loads the training side: proved in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("torch", "onnx", "optimum", "transformers", "sklearn", "skimage", "matplotlib", "lr_onnx.export")

PROBE = """
import sys
{stmt}
bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in {forbidden!r}))
print("LOADED:" + ",".join(bad))
"""


def _loaded(stmt: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(stmt=stmt, forbidden=FORBIDDEN)], capture_output=True, text=True, check=True
    )
    return out.stdout.rsplit("LOADED:", 1)[1].strip()


def test_runtime_package_imports_nothing_from_the_training_side():
    assert _loaded("import lr_onnx.runtime, lr_onnx.runtime.errors") == ""


def test_routing_a_real_image_loads_no_training_module():
    """The whole serving path (bundle, sessions, preprocessing, encoders, router) in a fresh interpreter."""
    stmt = (
        "from lr_onnx import Router\nimport pathlib\nimport lr_onnx\n"
        "ex = pathlib.Path(lr_onnx.__file__).parent / 'assets' / 'examples' / 'receipt.jpg'\n"
        "print(Router.load().route([ex], 'What is the total?').model)"
    )
    assert _loaded(stmt) == ""


def test_serving_gateway_imports_nothing_from_the_training_side():
    """`lr-onnx serve`'s whole app, its upstream client and the stand-in, in a fresh interpreter."""
    stmt = (
        "import lr_onnx.serve.app, lr_onnx.serve.server, lr_onnx.serve.upstream, lr_onnx.serve.standin\n"
        "from lr_onnx.serve.app import create_app\nfrom lr_onnx.serve.config import ServeConfig\n"
        "from lr_onnx import Router\ncreate_app(Router.load(), ServeConfig())"
    )
    assert _loaded(stmt) == ""


def test_cli_help_imports_nothing_heavy():
    stmt = "from lr_onnx.cli import main\ntry:\n    main(['data', '--help'])\nexcept SystemExit:\n    print()"
    assert _loaded(stmt) == ""


def test_runtime_sources_never_import_export_or_torch():
    import pathlib
    import re

    repo = pathlib.Path(__file__).resolve().parents[1]
    pat = re.compile(r"^\s*(import|from)\s+(torch|onnx\b|optimum|transformers|\.\.export|lr_onnx\.export)", re.M)
    offenders = [
        p.name for root in (repo / "runtime", repo / "serve") for p in root.rglob("*.py") if pat.search(p.read_text())
    ]
    assert offenders == []


def test_import_rules_between_the_sides():
    """The layout's rules (docs/architecture.md): runtime never imports export, serve or the CLI; serve never imports
    export or the CLI; export never imports serve or the CLI. Read from the sources, imports inside functions too."""
    import pathlib
    import re

    repo = pathlib.Path(__file__).resolve().parents[1]
    rules = {"runtime": ("export", "serve", "cli"), "serve": ("export", "cli"), "export": ("serve", "cli")}
    offenders = []
    for side, banned in rules.items():
        pat = re.compile(r"^\s*(?:from|import)\s+(?:\.{2,}|lr_onnx\.)(" + "|".join(banned) + r")\b", re.M)
        offenders += [
            f"{p.relative_to(repo)} imports {m.group(1)}"
            for p in (repo / side).rglob("*.py")
            for m in pat.finditer(p.read_text())
        ]
    assert offenders == []


def test_no_source_file_outside_tests_is_longer_than_450_lines():
    """One job per module (issue 25): a file that grows past this has started a second job."""
    import pathlib
    import subprocess

    repo = pathlib.Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "*.py"], cwd=repo, capture_output=True, text=True
    ).stdout.split()
    files = listed or [str(p.relative_to(repo)) for p in repo.rglob("*.py") if ".venv" not in p.parts]
    long = {
        f: n
        for f in files
        if not f.startswith("tests/")
        and (repo / f).is_file()
        and (n := len((repo / f).read_text(encoding="utf-8").splitlines())) > 450
    }
    assert long == {}
