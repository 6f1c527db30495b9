"""The native-format loader: real data loads with the published statistics; every fault is one clear line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DCROUTER, rec, write_native
from lr_onnx.export.data.format import load_dataset
from lr_onnx.export.evaluate.routing_metrics import best_single, oracle_choice, random_router, routed_means
from lr_onnx.runtime.errors import DataError


@pytest.mark.shared_data("dcrouter")
def test_dcrouter_loads_with_published_test_statistics():
    d = load_dataset(DCROUTER)
    assert (d.n, d.k) == (6108, 9)
    assert d.A.all() and not any(d.images)
    test = np.array([s == "test" for s in d.split])
    Y, C, A = d.Y[test], d.C[test], d.A[test]
    b = best_single(Y, C, A)
    assert d.model_names[b] == "llama-3.1-nemotron-51b-instruct"
    assert Y[:, b].mean() == pytest.approx(0.5626, abs=5e-5)
    assert C[:, b].mean() == pytest.approx(6.8726e-05, rel=1e-4)
    q, c = routed_means(Y, C, oracle_choice(Y, C, A))
    assert q == pytest.approx(0.74336, abs=5e-6)
    assert c == pytest.approx(1.8768e-05, rel=1e-4)
    assert random_router(Y, C, A) == pytest.approx((0.37548, 3.2242e-05), rel=1e-4)


@pytest.mark.shared_data("dcrouter")
def test_dcrouter_costs_are_input_price_times_words():
    d = load_dataset(DCROUTER)
    price = np.array([m["price_in_per_mtok"] for m in d.models])
    words = np.array([len(q.split()) for q in d.question])
    expected = price[None, :] * 1.3 * words[:, None] / 1e6
    np.testing.assert_allclose(d.C, expected, rtol=1e-6, atol=1e-12)


def test_availability_missing_and_null_outcomes(tmp_path):
    r = rec(1, outcomes={"a": {"score": 0.5, "cost": 0.2}, "b": {"score": None, "cost": 0.1}})
    d = load_dataset(write_native(tmp_path / "d", [r, rec(2, outcomes={"b": {"score": 1, "cost": 0}})]))
    assert d.A.tolist() == [[True, False], [False, True]]
    assert d.Y[0, 0] == 0.5 and np.isnan(d.Y[1, 0])


def test_missing_image_is_counted_or_strict_error(tmp_path):
    root = write_native(tmp_path / "d", [rec(1, images=["img/there.png", "img/gone.png"])])
    (root / "img").mkdir()
    (root / "img" / "there.png").write_bytes(b"x")
    d = load_dataset(root)
    assert d.missing_images == 1 and [p.name for p in d.images[0]] == ["there.png"]
    with pytest.raises(DataError, match=r"queries.jsonl:1: image 'img/gone.png' not found"):
        load_dataset(root, strict_images=True)


BAD_CASES = [
    ("malformed", ['{"id": "x", '], r"queries.jsonl:3: malformed JSON"),
    ("duplicate", [json.dumps(rec(0))], r"queries.jsonl:3: duplicate id 'q0' \(first on line 1\)"),
    (
        "above one",
        [json.dumps(rec(9, outcomes={"a": {"score": 1.5, "cost": 0}}))],
        r"queries.jsonl:3: score 1.5 for model 'a' is outside \[0, 1\]",
    ),
    ("negative", [json.dumps(rec(9, outcomes={"a": {"score": -0.1, "cost": 0}}))], r"outside \[0, 1\]"),
    (
        "nan",
        ['{"id": "q9", "question": "", "images": [], "dataset": "d", "outcomes": {"a": {"score": NaN, "cost": 0}}}'],
        r"queries.jsonl:3: score nan for model 'a' is not a number",
    ),
    ("string score", [json.dumps(rec(9, outcomes={"a": {"score": "1", "cost": 0}}))], r"is not a number in \[0, 1\]"),
    (
        "unknown model",
        [json.dumps(rec(9, outcomes={"zz": {"score": 1, "cost": 0}}))],
        r"queries.jsonl:3: outcome for model 'zz', which is not in models.json",
    ),
    ("no outcomes", [json.dumps(rec(9, outcomes={}))], r"queries.jsonl:3: query 'q9' has no outcomes"),
    ("all null", [json.dumps(rec(9, outcomes={"a": {"score": None, "cost": None}}))], r"query 'q9' has no outcomes"),
    ("absolute image", [json.dumps(rec(9, images=["/etc/passwd"]))], r"must be relative to the dataset folder"),
    ("dotdot image", [json.dumps(rec(9, images=["../x.png"]))], r"must be relative"),
    ("negative cost", [json.dumps(rec(9, outcomes={"a": {"score": 1, "cost": -1}}))], r"cost -1 for model 'a'"),
    ("no id", [json.dumps({k: v for k, v in rec(9).items() if k != "id"})], r"'id' must be a non-empty string"),
    ("split on some", [json.dumps(rec(9, split="train"))], r"'split' must be on every row or on none"),
    ("not object", ["[1, 2]"], r"expected a JSON object"),
]


@pytest.mark.parametrize("name,lines,pattern", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_each_fault_is_one_line_with_file_and_line(tmp_path, name, lines, pattern):
    root = write_native(tmp_path / "d", [rec(0), rec(1)], raw_lines=lines)
    with pytest.raises(DataError, match=pattern) as e:
        load_dataset(root)
    assert "\n" not in str(e.value)


def test_folder_level_faults(tmp_path):
    with pytest.raises(DataError, match="no such dataset folder"):
        load_dataset(tmp_path / "absent")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(tmp_path / "f.txt")
    root = write_native(tmp_path / "d", [rec(0)])
    (root / "models.json").write_text("{broken")
    with pytest.raises(DataError, match=r"models.json: malformed JSON"):
        load_dataset(root)
    (root / "models.json").write_text(json.dumps([{"name": "a"}, {"name": "a"}]))
    with pytest.raises(DataError, match="duplicate model name 'a'"):
        load_dataset(root)
    for bad, why in (("a,b", "comma"), (" a", "leading or trailing spaces"), ("a\nb", "control character")):
        (root / "models.json").write_text(json.dumps([{"name": bad}]))
        with pytest.raises(DataError, match=why):
            load_dataset(root)
