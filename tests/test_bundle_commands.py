"""route-batch, info, doctor, models add/remove on bundles, calibrate and the provider option, from the command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import REPO, models_add_args
from lr_onnx.cli import main
from lr_onnx.runtime.bundle import load_bundle
from lr_onnx.runtime.router import DEFAULT_BUNDLE, Router

EX = REPO / "assets" / "examples"


def _write_batch(path, n=5, bad_line=True):
    lines = [json.dumps({"id": f"q{i}", "question": f"What is {i} + {i}?", "images": []}) for i in range(n)]
    lines.insert(2, json.dumps({"id": "img", "question": "What is the total?", "images": [str(EX / "receipt.jpg")]}))
    if bad_line:
        lines.insert(4, "{not json")
        lines.insert(5, json.dumps({"id": "missing", "question": "x", "images": ["nope.png"]}))
    path.write_text("\n".join(lines) + "\n")


def test_route_batch_reports_bad_lines_and_resumes(runner, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write_batch(inp)
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(out), "--batch-size", "3"])
    assert res.exit_code == 1
    assert "in.jsonl:5: malformed JSON" in res.output and "in.jsonl:6:" in res.output and "no such image" in res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted([f"q{i}" for i in range(5)] + ["img"])
    assert all(r["model"] == r["candidates"][0]["name"] for r in rows)
    # resume after a crash that tore the last line: nothing done is lost or duplicated
    text = out.read_text().splitlines()
    out.write_text("\n".join(text[:3]) + "\n" + text[3][:20])
    _write_batch(inp, n=7, bad_line=False)
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(out)])
    assert res.exit_code == 0 and "already done 3" in res.output
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines() if x.strip().endswith("}")]
    assert sorted(ids) == sorted([f"q{i}" for i in range(7)] + ["img"])


def test_route_batch_csv(runner, tmp_path):
    (tmp_path / "in.csv").write_text(f"id,question,images\na,What is 1+1?,\nb,What is shown?,{EX / 'chart.png'}\n")
    res = runner.invoke(main, ["route-batch", str(tmp_path / "in.csv"), "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0 and len((tmp_path / "o.jsonl").read_text().splitlines()) == 2


def test_info_and_doctor(runner):
    res = runner.invoke(main, ["info"])
    assert (
        res.exit_code == 0 and load_bundle(DEFAULT_BUNDLE).model_names[0] in res.output and "graph router" in res.output
    )
    res = runner.invoke(main, ["doctor"])
    assert res.exit_code == 0, res.output
    assert (
        "sha256 verified" in res.output and "golden parity" in res.output and "bound CPUExecutionProvider" in res.output
    )


def test_cli_unavailable_provider_is_one_line(runner):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine offers CUDA")
    res = runner.invoke(main, ["route", "hello?", "--provider", "cuda"])
    assert res.exit_code == 1 and res.output.startswith("Error: provider 'cuda' is not offered")


def _labelled(tmp_path, name="NewVLM", n=30):
    recs = []
    for i in range(n):
        recs.append(
            {
                "id": f"n{i}",
                "question": f"What is {i} * 3?",
                "images": [],
                "dataset": "x",
                "outcomes": {name: {"score": float(i % 3 == 0), "cost": 0.0004, "tokens": 40}},
            }
        )
    (tmp_path / "new.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return tmp_path / "new.jsonl"


def test_models_add_and_remove_on_a_bundle_copy(runner, tmp_path):
    before = (DEFAULT_BUNDLE / "manifest.json").read_bytes()
    res = runner.invoke(
        main,
        models_add_args(
            DEFAULT_BUNDLE,
            tmp_path / "b2",
            "NewVLM",
            "--price-in",
            "0.3",
            "--price-out",
            "0.6",
            "--outcomes",
            str(_labelled(tmp_path)),
        ),
    )
    assert res.exit_code == 0, res.output
    assert (DEFAULT_BUNDLE / "manifest.json").read_bytes() == before  # the source bundle is untouched
    r = Router.load(tmp_path / "b2")
    # arithmetic questions far from every memory row: every model's estimate is its global mean, so no difficulty
    # varies across them and no local prior is fitted (nor printed)
    assert "local_prior" not in r.pool[-1].extra["added_with"] and "its estimate's prior" not in res.output
    first = load_bundle(DEFAULT_BUNDLE).model_names[0]
    assert r.names[-1] == "NewVLM" and len(r.names) == len(load_bundle(DEFAULT_BUNDLE).model_names) + 1
    d = r.route(None, "What is 4 * 3?", models=["NewVLM", first])
    assert d.model in ("NewVLM", first) and len(d.candidates) == 2
    res = runner.invoke(
        main, ["models", "remove", "--bundle", str(tmp_path / "b2"), "--out", str(tmp_path / "b3"), "--name", first]
    )
    assert res.exit_code == 0 and first not in Router.load(tmp_path / "b3").names
    assert (
        runner.invoke(
            main, ["models", "remove", "--bundle", str(tmp_path / "b3"), "--out", str(tmp_path / "b4"), "--name", first]
        ).exit_code
        == 2
    )  # not in the pool: usage
    assert (
        runner.invoke(main, ["models", "add", "--name", "x", "--outcomes", str(tmp_path / "new.jsonl")]).exit_code == 2
    )


@pytest.mark.parametrize("name", ["a,b", " NewVLM", "New\nVLM", "gpt-4o"])
def test_models_add_refuses_a_name_that_would_not_match_everywhere(runner, tmp_path, name):
    """A comma (--models splits on it), outer spaces (stripped, ' gpt-4o' became a second 'gpt-4o') or a control
    character (a newline broke every table) in a new model's name: one line, exit non-zero, nothing written."""
    first = load_bundle(DEFAULT_BUNDLE).model_names[0]
    name = first if name == "gpt-4o" else name
    res = runner.invoke(
        main, models_add_args(DEFAULT_BUNDLE, tmp_path / "b2", name, "--outcomes", str(_labelled(tmp_path, name)))
    )
    assert res.exit_code != 0 and "Traceback" not in res.output and not (tmp_path / "b2").exists()
    assert res.output.strip().startswith("Error:") and len(res.output.strip().splitlines()) == 1, res.output


def test_calibrate_records_lambda_atomically(runner, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    r0 = Router.load(b)
    pool, exp_cost = r0.names, r0.expected_cost
    budget = float(np.median(exp_cost))
    rng = np.random.default_rng(0)
    recs = []
    for i in range(40):
        outs = {
            m: {"score": float(rng.random() < 0.5 + 0.04 * k), "cost": float(exp_cost[k])} for k, m in enumerate(pool)
        }
        question = f"What is {i} - 2?" + " Explain each step in detail." * (i % 7) * 40  # per-query costs vary
        recs.append({"id": f"c{i}", "question": question, "images": [], "dataset": "d", "outcomes": outs})
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (tmp_path / "d" / "models.json").write_text(json.dumps([{"name": m} for m in pool]))
    res = runner.invoke(
        main, ["calibrate", "--bundle", str(b), "--data", str(tmp_path / "d"), "--max-avg-cost", str(budget)]
    )
    assert res.exit_code == 0, res.output
    m = json.loads((b / "manifest.json").read_text())
    cal = m["lambda"]["calibrated"]
    marked = [ln for ln in res.output.splitlines() if ln.startswith("*")]  # the table marks the recorded point
    assert len(marked) == 1 and f"{cal['operating_point']['score']:.4f}" in marked[0]
    assert cal["operating_point"]["cost"] <= budget and m["lambda"]["default"] == cal["operating_point"]["lambda"]
    assert Router.load(b).default_lambda == m["lambda"]["default"]
    # the recorded operating point is what `route` then does: same choices, so the same mean cost and score
    routed = Router.load(b).route_many([([], r["question"]) for r in recs])
    got = [recs[i]["outcomes"][d.model] for i, d in enumerate(routed)]
    assert np.mean([o["cost"] for o in got]) == pytest.approx(cal["operating_point"]["cost"], rel=1e-9)
    assert np.mean([o["score"] for o in got]) == pytest.approx(cal["operating_point"]["score"], rel=1e-9)
    res = runner.invoke(
        main, ["calibrate", "--bundle", str(b), "--data", str(tmp_path / "d"), "--max-share", f"{pool[0]}:0.1"]
    )
    assert (
        res.exit_code == 0
        and json.loads((b / "manifest.json").read_text())["lambda"]["calibrated"]["target"]["max_share"]["share"] == 0.1
    )
    assert runner.invoke(main, ["calibrate", "--bundle", str(b), "--data", str(tmp_path / "d")]).exit_code == 2
    assert (
        runner.invoke(
            main, ["calibrate", "--bundle", str(b), "--data", str(tmp_path / "d"), "--max-share", f"{pool[0]}:7"]
        ).exit_code
        == 2
    )


def test_out_of_coverage_flag_in_route_json_api_and_batch(runner, tmp_path):
    """A query less similar to the slice centroids than the bundle's threshold is flagged everywhere."""
    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    m = json.loads((b / "manifest.json").read_text())
    m["coverage"] = {"threshold": 0.999, "percentile": 1.0}
    (b / "manifest.json").write_text(json.dumps(m))
    r = Router.load(b)
    d = r.route([], "What is 2 + 2?")
    assert d.coverage["out_of_coverage"] is True and d.coverage["threshold"] == 0.999
    assert -1.0 <= d.coverage["similarity"] < 0.999 and d.to_dict()["coverage"] == d.coverage
    res = runner.invoke(main, ["route", "What is 2 + 2?", "--bundle", str(b)])
    assert res.exit_code == 0 and "note: out of coverage" in res.output
    m["coverage"]["threshold"] = -1.0
    (b / "manifest.json").write_text(json.dumps(m))
    far = Router.load(b).route([], "What is 2 + 2?").coverage  # a text question: far from the image memory
    assert far["out_of_coverage"] is True and far["memory_closeness"] < 0.1
    assert "closeness" in runner.invoke(main, ["route", "What is 2 + 2?", "--bundle", str(b)]).output
    ex = DEFAULT_BUNDLE.parent / "examples" / "lines.png"  # a blindtest-like picture: in the slices' coverage
    assert Router.load(b).route([ex], "How many times do the two lines intersect?").coverage["similarity"] > -1.0
    m["coverage"]["threshold"] = 0.999
    (b / "manifest.json").write_text(json.dumps(m))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i}?"}) + "\n" for i in range(3)))
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(tmp_path / "o.jsonl"), "--bundle", str(b)])
    assert res.exit_code == 0 and "out of coverage 3" in res.output
    assert (
        Router.load(DEFAULT_BUNDLE).route([], "q").coverage is None
        or load_bundle(DEFAULT_BUNDLE).manifest.coverage is not None
    )
