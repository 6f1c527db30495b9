"""What a newcomer hits in the first hour (issue 23): usage errors, help texts, the serve extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from conftest import models_add_args
from lr_onnx.cli import main
from lr_onnx.runtime.router import Router


def test_an_empty_question_is_a_usage_error(runner):
    for args in (["route", "assets/examples/chart.png", ""], ["route", "   "]):
        res = runner.invoke(main, args)
        assert res.exit_code == 2 and "question is empty" in res.output, res.output


def test_excluding_a_model_outside_the_pool_changes_nothing():
    r = Router.load()
    q = "What is 17 * 23?"
    assert r.route([], q, exclude=["a-model-this-pool-lacks"]).model == r.route([], q).model
    d = r.route([], q, exclude=["a-model-this-pool-lacks", r.names[0]])
    assert r.names[0] not in [c.name for c in d.candidates] and d.excluded == (r.names[0],)


def test_help_texts_say_what_options_take(runner):
    out = runner.invoke(main, ["route", "--help"]).output
    assert "NUMBER|PRESET" in out
    assert "merge" in runner.invoke(main, ["data", "--help"]).output
    rm = " ".join(runner.invoke(main, ["models", "remove", "--help"]).output.split())  # as read, not as wrapped
    assert "--name TEXT" in rm and "lr-onnx info" in rm and "copied to --out" in rm


def test_serve_without_its_extra_names_the_extra(runner, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    res = runner.invoke(main, ["serve"])
    assert res.exit_code == 1 and "serve extra" in res.output and "uvicorn" in res.output
    assert "Traceback" not in res.output and len([ln for ln in res.output.splitlines() if ln.strip()]) == 1


def _labelled(tmp, pool, exp_cost, n=30):
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    recs = [
        {
            "id": f"c{i}",
            "question": f"What is {i} - 2?",
            "images": [],
            "dataset": "d",
            "outcomes": {
                m: {"score": float(rng.random() < 0.5), "cost": float(exp_cost[k])} for k, m in enumerate(pool)
            },
        }
        for i in range(n)
    ]
    tmp.mkdir()
    (tmp / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (tmp / "models.json").write_text(json.dumps([{"name": m} for m in pool]))
    return tmp


def test_calibrate_checks_its_target_first_and_never_writes_an_unmet_one(runner, tmp_path):
    import shutil
    import time

    from lr_onnx.runtime.router import DEFAULT_BUNDLE

    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    r = Router.load(b)
    d = _labelled(tmp_path / "d", r.names, r.expected_cost)
    t0 = time.monotonic()
    res = runner.invoke(main, ["calibrate", "--bundle", str(b), "--data", str(d), "--max-share", "no-such-model:0.5"])
    assert res.exit_code == 2 and "unknown model" in res.output and "encoding" not in res.output
    before = (b / "manifest.json").read_bytes()
    res = runner.invoke(main, ["calibrate", "--bundle", str(b), "--data", str(d), "--max-avg-cost", "1e-12"])
    assert res.exit_code == 1 and "no lambda meets the target" in res.output and "meets the target" in res.output
    assert (b / "manifest.json").read_bytes() == before
    assert time.monotonic() - t0 < 120


def test_models_add_reports_what_it_used_and_prices_like_route(runner, tmp_path):
    import json
    import shutil

    from PIL import Image

    from lr_onnx.runtime.costs import query_cost, rule_spec
    from lr_onnx.runtime.router import DEFAULT_BUNDLE

    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    chart = DEFAULT_BUNDLE.parent / "examples" / "chart.png"
    shutil.copy(chart, tmp_path / "chart.png")  # an outcome file's image paths are relative to it
    entry = {
        "price_in_per_mtok": 2.5,
        "price_out_per_mtok": 10.0,
        "image_tokens": rule_spec("openai-high-detail"),
        "output_tokens": 50.0,
    }
    size = Image.open(chart).size
    recs = []
    for i in range(24):
        q = f"What is the value of bar {i}?"
        recs.append(
            {
                "id": f"n{i}",
                "question": q,
                "images": ["chart.png"],
                "outcomes": {"newbie": {"score": 1.0, "cost": query_cost(entry, q, [size])}},
            }
        )
    (tmp_path / "new.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    res = runner.invoke(
        main,
        models_add_args(
            b,
            tmp_path / "b2",
            "newbie",
            "--price-in",
            "2.5",
            "--price-out",
            "10",
            "--image-tokens",
            "openai-high-detail",
            "--outcomes",
            str(tmp_path / "new.jsonl"),
        ),
    )
    assert res.exit_code == 0, res.output
    assert "24 labelled queries" in res.output and "predicted mu_tilde on these labelled queries" in res.output
    r2 = Router.load(tmp_path / "b2")
    q = "What is the value of bar 3?"
    routed = r2.route([chart], q)
    cost = next(c.expected_cost for c in routed.candidates if c.name == "newbie")
    assert abs(cost - query_cost(entry, q, [size])) < 1e-9  # the recorded costs, image tokens included
    observed = sum(r["outcomes"]["newbie"]["cost"] for r in recs) / len(recs)
    pool_entry = next(p.to_dict() for p in r2.bundle.pool if p.name == "newbie")
    assert abs(pool_entry["expected_cost_usd"] - observed) < 1e-12 and observed > 1e-4  # not the words-only 1e-5


def test_info_json_and_route_batch_summary(runner, tmp_path):
    import json

    info = json.loads(runner.invoke(main, ["info", "--json"]).output)
    assert len(info["pool"]) == len(Router.load().names) and len(info["digest"]) == 64 and "presets" in info["lambda"]
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "\n".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?"}) for i in range(5)) + "\n{broken\n"
    )
    res = runner.invoke(main, ["route-batch", str(inp), "--out", str(tmp_path / "out.jsonl")])
    assert res.exit_code == 1 and res.output.count("in.jsonl:6:") == 1
    line = next(ln for ln in res.output.splitlines() if ln.startswith("chosen: "))
    assert (
        "expected cost" in line
        and sum(int(part.rsplit(" ", 1)[1]) for part in line.removeprefix("chosen: ").split(";")[0].split(", ")) == 5
    )


def test_models_propose_works_from_a_bundle_and_your_own_queries(runner, tmp_path):
    import json

    chart = str((Path(__file__).resolve().parents[1] / "assets" / "examples" / "chart.png"))
    qs = [
        {
            "id": f"u{i}",
            "question": f"What is {i} times {i + 3}?" if i % 2 else f"Which bar is number {i}?",
            "images": [] if i % 2 else [chart],
        }
        for i in range(40)
    ]
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(q) for q in qs) + "\n")
    res = runner.invoke(
        main,
        [
            "models",
            "propose",
            "--bundle",
            "assets/bundle",
            "--from",
            str(tmp_path / "mine.jsonl"),
            "--out",
            str(tmp_path / "cal"),
            "--n",
            "24",
        ],
    )
    assert res.exit_code == 0, res.output
    got = [json.loads(ln) for ln in (tmp_path / "cal" / "queries.jsonl").read_text().splitlines()]
    assert len(got) == 24 and len({g["id"] for g in got}) == 24
    assert all((tmp_path / "cal" / p).is_file() for g in got for p in g["images"])
    assert (
        runner.invoke(main, ["models", "propose", "--bundle", "assets/bundle", "--out", str(tmp_path / "x")]).exit_code
        == 2
    )


def test_text_only_and_keep_images_together_are_a_usage_error(runner, tmp_path):
    res = runner.invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--text-only", "--keep-images"])
    assert res.exit_code == 2 and "contradict each other" in res.output and not (tmp_path / "run").exists()


def test_a_seed_the_generators_cannot_take_is_a_usage_error(runner, tmp_path):
    """`train --seed -5` and `--seed 99999999999999999999` ended in a numpy / torch traceback after the data loaded."""
    for args in (
        ["train", str(tmp_path), "--out", str(tmp_path / "run")],
        ["data", "demo", str(tmp_path / "demo")],
        ["models", "propose", "--bundle", str(tmp_path), "--out", str(tmp_path / "p")],
    ):
        for seed in ("-5", str(2**64)):
            res = runner.invoke(main, [*args, "--seed", seed])
            assert res.exit_code == 2 and "'--seed'" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()


def test_feedback_and_refresh_refuse_a_nan_window_or_share(runner, tmp_path):
    """click's FloatRange let `nan` through: `refresh --retrain-share nan` wrote a bundle whose verdict read
    'threshold nan%'. Both options now take the project's finite Number, with their own bounds."""
    (tmp_path / "fb.jsonl").write_text("{}\n")
    feedback = ["feedback", str(tmp_path), str(tmp_path / "fb.jsonl"), "--window-h"]
    for v in ("nan", "inf", "0", "-1"):
        res = runner.invoke(main, [*feedback, v])
        assert res.exit_code == 2 and "must be a finite number between 0.001 and" in res.output, res.output
    refresh = ["refresh", "--bundle", str(tmp_path), "--log", str(tmp_path), "--out", str(tmp_path / "b")]
    for v in ("nan", "1.5", "-0.1"):
        res = runner.invoke(main, [*refresh, "--retrain-share", v])
        assert res.exit_code == 2 and "must be a finite number between 0 and 1" in res.output, res.output
    assert not (tmp_path / "b").exists()


def test_an_output_that_cannot_be_written_is_one_line_and_leaves_nothing(runner, tmp_path, monkeypatch):
    """An output folder under a file or a virtual file system, and a full disk mid-way, are the machine's state,
    not bugs: one line each, exit 1, and nothing half-written where the output was to go."""
    import errno

    (tmp_path / "a.txt").write_text("x")
    under_file = runner.invoke(main, ["data", "demo", str(tmp_path / "a.txt" / "out"), "--n", "50"])
    assert under_file.exit_code == 1 and "a.txt is a file, not a folder" in under_file.output
    assert "Traceback" not in under_file.output and (tmp_path / "a.txt").read_text() == "x"
    proc = runner.invoke(main, ["data", "demo", "/proc/lr-onnx-out", "--n", "50"])
    assert proc.exit_code == 1 and proc.output.startswith("Error: /proc/lr-onnx-out: cannot be written")

    def full(out, **kwargs):  # build_demo's own staging, the disk full half-way through
        from lr_onnx.export.files import staged_output

        with staged_output(out) as tmp:
            (tmp / "half.jsonl").write_text("{")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "half.jsonl"))

    monkeypatch.setattr("lr_onnx.export.data.demo.build_demo", full)
    res = runner.invoke(main, ["data", "demo", str(tmp_path / "demo"), "--n", "50"])
    assert res.exit_code == 1 and "No space left on device" in res.output and len(res.output.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # the staged folder is gone, no 'demo'
