"""Shared fixtures: tiny native datasets written on the fly, the project's real datasets in ../shared, a CLI runner.

Tests that read `../shared/data/<name>` carry `@pytest.mark.shared_data`: they skip with one line where
`../shared` is absent (a user's fresh clone), and fail instead when LR_ONNX_REQUIRE_SHARED_DATA=1 (`.ci/run`
sets it, so CI can never pass by skipping them). LR_ONNX_SHARED_DATA points elsewhere.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the experiment drivers (newmodel, coverage_flag) are scripts there
SHARED_DATA = Path(os.environ.get("LR_ONNX_SHARED_DATA") or REPO.parent / "shared" / "data")
DCROUTER = SHARED_DATA / "dcrouter"
BLINDTEST = SHARED_DATA / "blindtest"
DYNAMATH = SHARED_DATA / "dynamath"
os.environ.setdefault("LR_ONNX_SHARED_DATA", str(SHARED_DATA))  # the demo generator reads mllm-skills there


def pytest_collection_modifyitems(config, items):
    """Skip (or, in CI, fail) the tests that need ../shared/data when it is not there."""
    for item in items:
        marker = item.get_closest_marker("shared_data")
        if marker is None:
            continue
        missing = [
            n
            for n in (marker.args or ("dcrouter",))
            if not any((SHARED_DATA / n / f).is_file() for f in ("queries.jsonl", "skills.json"))
        ]
        if not missing:
            continue
        why = f"needs {', '.join(str(SHARED_DATA / n) for n in missing)} (the project's shared data)"
        if os.environ.get("LR_ONNX_REQUIRE_SHARED_DATA") == "1":
            item.user_properties.append(("shared_missing", why))
        else:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(autouse=True)
def _require_shared(request):
    for key, why in request.node.user_properties:
        if key == "shared_missing":
            pytest.fail(f"{why}; LR_ONNX_REQUIRE_SHARED_DATA=1 makes this a failure")


def write_native(root: Path, records: list[dict], models: list[dict] | None = None, raw_lines=None) -> Path:
    """Write a native dataset folder; `raw_lines` (strings) are appended verbatim after the records."""
    root.mkdir(parents=True, exist_ok=True)
    models = models if models is not None else [{"name": "a", "price_in_per_mtok": 1.0}, {"name": "b"}]
    (root / "models.json").write_text(json.dumps(models))
    lines = [json.dumps(r) for r in records] + list(raw_lines or [])
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n")
    return root


def rec(i: int, **kw) -> dict:
    r = {
        "id": f"q{i}",
        "question": f"question {i}",
        "images": [],
        "dataset": "ds" + str(i % 2),
        "outcomes": {"a": {"score": 1.0, "cost": 0.1}, "b": {"score": 0.0, "cost": 0.01}},
    }
    r.update(kw)
    return r


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def tiny(tmp_path):
    return write_native(tmp_path / "tiny", [rec(i) for i in range(30)])


@pytest.fixture
def logged():
    """The gateway's log records (its logger may not propagate to the root once `serve` has run)."""
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    keep, log = Keep(), logging.getLogger("lr_onnx.serve")
    log.addHandler(keep)
    yield keep
    log.removeHandler(keep)


def models_add_args(bundle, out, name, *rest: str) -> list[str]:
    """`lr-onnx models add --bundle BUNDLE --out OUT --name NAME REST...`: the arguments every models-add test starts
    with, the options that matter to each test after them."""
    return ["models", "add", "--bundle", str(bundle), "--out", str(out), "--name", str(name), *rest]
