"""What a newcomer hits in the first hour (issue 23): usage errors, help texts, the serve extra."""
from __future__ import annotations

import importlib.util

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
    rm = runner.invoke(main, ["models", "remove", "--help"]).output
    assert "--name TEXT" in rm and "lr-onnx info" in rm and "copied to --out" in rm


def test_serve_without_its_extra_names_the_extra(runner, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    res = runner.invoke(main, ["serve"])
    assert res.exit_code == 1 and "serve extra" in res.output and "uvicorn" in res.output
    assert "Traceback" not in res.output and len([ln for ln in res.output.splitlines() if ln.strip()]) == 1
