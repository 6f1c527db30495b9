"""Per-query expected cost (issue 13 §1): the image-token rules, the router's use of them, `models add --image-tokens`."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

from conftest import SHARED_DATA, models_add_args
from lr_onnx.cli import main
from lr_onnx.runtime import costs
from lr_onnx.runtime.errors import BundleError
from lr_onnx.runtime.router import DEFAULT_BUNDLE, Router


@pytest.mark.parametrize(
    "rule,w,h,tokens",
    [
        ("openai-high-detail", 2000, 2000, 85 + 170 * 4),  # 2000 -> 768x768 -> 2x2 tiles: 765, as the issue says
        ("openai-high-detail", 512, 512, 85 + 170),
        ("openai-high-detail", 640, 480, 85 + 170 * 2),
        ("claude-pixels-div-750", 1000, 500, 667),  # ceil(500,000 / 750)
        ("claude-pixels-div-750", 2000, 2000, 1534),  # 1568 long edge, then the 1.15 MP cap
        ("gemini-258", 4000, 3000, 258),
        ("fixed-576", 10, 10, 576),
        ("qwen2-vl-28px", 640, 480, 23 * 17),  # 644 x 476 -> 23 x 17 cells
        ("internvl2-448-tiles", 448, 448, 256),  # one tile, no thumbnail
        ("internvl2-448-tiles", 896, 448, 256 * 3),  # 2 x 1 tiles + thumbnail
        ("llava-next-anyres", 640, 480, 576 * 5),  # 672 x 672: 4 cells + base
        ("llava-next-anyres", 300, 700, 576 * 4),  # 336 x 1008 keeps the full resolution
        ("mllama-560-tiles", 640, 480, 1601 * 2),  # 1120 x 560: the least upscaling, then the least area
    ],
)
def test_image_token_rules(rule, w, h, tokens):
    assert costs.image_tokens(costs.rule_spec(rule), w, h) == tokens


def test_text_tokens_and_query_cost():
    assert costs.text_tokens("one two three four") == 6  # ceil(1.3 * 4)
    entry = {
        "price_in_per_mtok": 2.5,
        "price_out_per_mtok": 10.0,
        "image_tokens": "openai-high-detail",
        "output_tokens": 300,
    }
    assert costs.query_cost(entry, "one two three four", [(640, 480)]) == pytest.approx((2.5 * (6 + 425) + 3000) / 1e6)
    assert costs.query_cost(entry, "one two three four", []) == pytest.approx((2.5 * 6 + 3000) / 1e6)
    assert costs.query_cost({**entry, "image_tokens": None}, "q", [(5, 5)]) is None  # no rule: the caller's constant
    with pytest.raises(ValueError, match="unknown image-token rule"):
        costs.rule_spec("magic-tiles")
    assert costs.rule_spec({"rule": "fixed", "tokens": 300}) == {"rule": "fixed", "tokens": 300}


@pytest.mark.shared_data("dynamath")
def test_rules_reproduce_the_real_datasets_recorded_costs():
    """The datasets' estimated costs were made with the same published rules: we must get them back."""
    models = {m["name"]: m for m in json.loads((SHARED_DATA / "dynamath" / "models.json").read_text())}
    errs = []
    for line in (SHARED_DATA / "dynamath" / "queries.jsonl").read_text().splitlines()[:300]:
        r = json.loads(line)
        sizes = [tuple(r["meta"]["image_size"])] if r["images"] else []
        for n, o in r["outcomes"].items():
            if o and o.get("cost"):
                c = costs.query_cost({**models[n], "output_tokens": 300}, r["question"], sizes)
                errs.append(abs(c - o["cost"]) / o["cost"])
    assert len(errs) > 3000 and max(errs) < 0.002


def _priced_bundle(tmp_path):
    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    m = json.loads((b / "manifest.json").read_text())
    for j, p in enumerate(m["pool"]):
        p["price_in_per_mtok"] = p.get("price_in_per_mtok") or 1.0
        p["price_out_per_mtok"] = p.get("price_out_per_mtok") or 1.0
        p["image_tokens"] = {"rule": "openai-high-detail"} if j == 0 else "fixed-576"
        p["output_tokens"] = 50
    (b / "manifest.json").write_text(json.dumps(m))
    return b, m


def _png(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (30, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


def test_router_prices_each_query(tmp_path, runner):
    b, m = _priced_bundle(tmp_path)
    r = Router.load(b)
    gpt = m["pool"][0]
    G = gpt["name"]
    text = r.route([], "What is two plus two?")
    small = r.route([_png(512, 512)], "What is two plus two?")
    big = r.route([_png(2000, 1000)], "What is two plus two?")
    text, small, big = ({c.name: c.expected_cost for c in d.candidates} for d in (text, small, big))
    cost = {"text": text, "small": small, "big": big}
    want = lambda sizes: costs.query_cost(gpt, "What is two plus two?", sizes)  # noqa: E731
    assert cost["text"][G] == pytest.approx(want([]))
    assert cost["small"][G] == pytest.approx(want([(512, 512)]))
    assert cost["big"][G] == pytest.approx(want([(2000, 1000)]))
    assert cost["text"][G] < cost["small"][G] < cost["big"][G]
    # the utility uses the same per-query cost, and --max-cost is a per-query budget
    lam = 1.0
    d = r.route([_png(2000, 1000)], "What is two plus two?", lam=lam)
    for c in d.candidates:
        assert c.utility == pytest.approx(c.mu_tilde - lam * c.expected_cost / r.space.cost_scale, abs=1e-6)
    budget = (cost["text"][G] + cost["big"][G]) / 2
    assert G in {c.name for c in r.route([], "What is two plus two?", max_cost=budget).candidates}
    assert G not in {c.name for c in r.route([_png(2000, 1000)], "What is two plus two?", max_cost=budget).candidates}
    res = runner.invoke(main, ["route", "What is two plus two?", "--bundle", str(b), "--json"])
    assert json.loads(res.output)["candidates"]
    m["pool"][0]["image_tokens"] = "magic-tiles"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="unknown image-token rule"):
        Router.load(b)


def test_models_add_image_tokens(runner, tmp_path):
    outcomes = tmp_path / "new.jsonl"
    outcomes.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": f"n{i}",
                    "question": f"What is {i} times two?",
                    "images": [],
                    "outcomes": {"NewVLM": {"score": i % 2, "cost": 2e-4, "tokens": 120}},
                }
            )
            for i in range(30)
        )
        + "\n"
    )
    res = runner.invoke(
        main,
        models_add_args(
            DEFAULT_BUNDLE,
            tmp_path / "b2",
            "NewVLM",
            "--price-in",
            "0.5",
            "--price-out",
            "1.5",
            "--image-tokens",
            "qwen2-vl-28px",
            "--outcomes",
            str(outcomes),
        ),
    )
    assert res.exit_code == 0, res.output
    entry = json.loads((tmp_path / "b2" / "manifest.json").read_text())["pool"][-1]
    assert entry["image_tokens"] == {"rule": "qwen2-vl-28px"} and entry["output_tokens"] == 120
    r = Router.load(tmp_path / "b2")
    c = {x.name: x.expected_cost for x in r.route([_png(640, 480)], "What is this?", models=["NewVLM"]).candidates}
    assert c["NewVLM"] == pytest.approx((0.5 * (costs.text_tokens("What is this?") + 23 * 17) + 1.5 * 120) / 1e6)
    bad = runner.invoke(
        main,
        models_add_args(
            DEFAULT_BUNDLE,
            tmp_path / "b3",
            "NewVLM",
            "--price-in",
            "1",
            "--image-tokens",
            "magic",
            "--outcomes",
            str(outcomes),
        ),
    )
    assert bad.exit_code == 2 and "unknown image-token rule" in bad.output and not (tmp_path / "b3").exists()
