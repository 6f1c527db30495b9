"""Shared fixtures: tiny native datasets written on the fly, the repo's real dcrouter copy, a CLI runner."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
DCROUTER = REPO / "data" / "dcrouter"


def write_native(root: Path, records: list[dict], models: list[dict] | None = None, raw_lines=None) -> Path:
    """Write a native dataset folder; `raw_lines` (strings) are appended verbatim after the records."""
    root.mkdir(parents=True, exist_ok=True)
    models = models if models is not None else [{"name": "a", "price_in_per_mtok": 1.0}, {"name": "b"}]
    (root / "models.json").write_text(json.dumps(models))
    lines = [json.dumps(r) for r in records] + list(raw_lines or [])
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n")
    return root


def rec(i: int, **kw) -> dict:
    r = {"id": f"q{i}", "question": f"question {i}", "images": [], "dataset": "ds" + str(i % 2),
         "outcomes": {"a": {"score": 1.0, "cost": 0.1}, "b": {"score": 0.0, "cost": 0.01}}}
    r.update(kw)
    return r


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def tiny(tmp_path):
    return write_native(tmp_path / "tiny", [rec(i) for i in range(30)])
