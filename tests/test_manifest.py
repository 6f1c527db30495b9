"""The typed manifest: one parse (`Manifest.from_dict`), one writer (`Manifest.to_dict`)."""

from __future__ import annotations

import json
import shutil

import pytest

from lr_onnx.runtime.bundle import load_bundle
from lr_onnx.runtime.errors import BundleError
from lr_onnx.runtime.manifest import MANIFEST, Manifest, PoolEntry
from lr_onnx.runtime.router import DEFAULT_BUNDLE


def _raw() -> str:
    return (DEFAULT_BUNDLE / MANIFEST).read_text(encoding="utf-8")


def test_the_shipped_manifest_round_trips_byte_for_byte():
    raw = _raw()
    m = Manifest.from_dict(json.loads(raw), DEFAULT_BUNDLE)
    assert json.dumps(m.to_dict(), indent=2) + "\n" == raw
    assert m.to_dict() == json.loads(raw)


def test_fields_are_typed():
    m = load_bundle(DEFAULT_BUNDLE).manifest
    assert all(isinstance(p, PoolEntry) for p in m.pool) and m.model_names == [p.name for p in m.pool]
    assert isinstance(m.pool[0].raw_profile, tuple) and m.pool[0].prior == m.pool[0].raw_profile[0]
    assert m.graphs["router"].file == "router.onnx" and m.graphs["router"].inputs["query"] == ["batch", 1667]
    assert m.image.size == 224 and m.text.max_tokens == 128 and m.files["router.onnx"].sha256
    assert m.memory is not None and m.memory.settings.k >= 1 and m.memory.rows > 0 and m.memory.blend is not None
    assert m.lambdas.presets["quality"].lam == 0.0 and m.coverage is not None and m.coverage.percentile == 1.0


def test_unknown_keys_survive_an_edit():
    """A newer writer's notes (top level, a pool entry, lambda, a preset) are kept, after the known keys."""
    d = json.loads(_raw())
    d["from_the_future"] = {"x": 1}
    d["pool"][0]["added_with"] = {"queries": 48}
    d["lambda"]["calibrated"] = {"target": {"max_avg_cost": 0.001}}
    d["lambda"]["presets"]["quality"]["note"] = "kept"
    out = Manifest.from_dict(d, DEFAULT_BUNDLE).to_dict()
    assert out == d and list(out)[-1] == "from_the_future" and list(out["pool"][0])[-1] == "added_with"


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d["pool"][1].update(cost_hat="cheap"), r"pool\[1\]\.cost_hat"),
        (lambda d: d["pool"][0].update(profile=d["pool"][0]["profile"][:-1]), "another width"),
        (lambda d: d["graphs"]["router"].update(inputs=[1]), "graphs.router.inputs and .outputs"),
        (lambda d: d["files"]["router.onnx"].update(bytes=-1), r"files\['router.onnx'\]\.bytes"),
        (lambda d: d["lambda"]["presets"].update(cheap={"lambda": -1}), "lambda.presets.cheap.lambda"),
        (lambda d: d.update(coverage=[]), "'coverage' must be an object"),
        (lambda d: d.update(refreshed=[]), "'refreshed' must be an object"),
        (lambda d: d.update(query_features="pixels"), "'query_features' must be 'text' or absent"),
        (lambda d: d.update(refreshed={"feedback_rows": "many"}), "refreshed.feedback_rows"),
        (lambda d: d.update(refreshed={"feedback_through": -1.0}), "refreshed.feedback_through"),
    ],
)
def test_a_bad_entry_is_one_line_naming_it(tmp_path, edit, match):
    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    d = json.loads(_raw())
    edit(d)
    (b / MANIFEST).write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(BundleError, match=match) as e:
        load_bundle(b)
    assert "\n" not in str(e.value) and str(b / MANIFEST) in str(e.value)


def test_a_router_that_reads_no_images_needs_schema_2_so_an_older_lr_onnx_refuses_it(monkeypatch):
    """A version-1 reader ignores `query_features` and would feed such a router images: the manifest says 2, and a
    bundle that every reader reads right keeps saying 1."""
    from lr_onnx.runtime import manifest as man

    d = json.loads(_raw())
    assert d["schema_version"] == 1 and Manifest.from_dict(d, DEFAULT_BUNDLE).to_dict()["schema_version"] == 1
    text_only = Manifest.from_dict({**d, "query_features": "text"}, DEFAULT_BUNDLE).to_dict()
    assert text_only["schema_version"] == 2 == man.SCHEMA_VERSION
    assert Manifest.from_dict(text_only, DEFAULT_BUNDLE).reads_images is False
    del text_only["graphs"]["image_encoder"]  # its export ships none: it is never run
    assert "image_encoder" not in Manifest.from_dict(text_only, DEFAULT_BUNDLE).graphs
    with pytest.raises(BundleError, match="graphs.image_encoder"):  # a router that reads images needs one
        Manifest.from_dict({**text_only, "query_features": None}, DEFAULT_BUNDLE)
    monkeypatch.setattr(man, "SCHEMA_VERSION", 1)  # the lr-onnx before it
    with pytest.raises(BundleError, match="schema version 2 is newer than this lr-onnx supports"):
        Manifest.from_dict(text_only, DEFAULT_BUNDLE)


def test_a_router_that_reads_no_images_never_runs_the_image_encoder(tmp_path):
    """`query_features: "text"` (validation chose text only, export.train.modality): each question is read as if
    asked without its images, and the image encoder's session is never opened."""
    import numpy as np

    from lr_onnx.runtime.features import without_images
    from lr_onnx.runtime.router import Router

    b = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, b)
    d = json.loads(_raw())
    d["query_features"] = "text"
    (b / MANIFEST).write_text(json.dumps(d), encoding="utf-8")
    chart = DEFAULT_BUNDLE.parents[1] / "assets" / "examples" / "chart.png"
    queries = [([chart], "What is the largest value?"), ([], "What is 12 * 13?")]
    text_only, full = Router.load(b), Router.load(DEFAULT_BUNDLE)
    q = text_only.features(queries)
    assert load_bundle(b).manifest.reads_images is False and "image_encoder" not in text_only.sessions.loaded
    np.testing.assert_allclose(q, without_images(full.features(queries)), atol=1e-6)
    assert (q[0, 384:-1] == 0).all() and np.isclose(q[0, -1], np.log1p(5))  # five words
    prepared = text_only.prepare([chart], "What is the largest value?")  # decoded and measured, never tensored
    assert prepared.tensors == () and prepared.meta == full.prepare([chart], "What is the largest value?").meta
    text_only.route([chart], "What is the largest value?")  # routes, costs still priced on the image
    assert "image_encoder" not in text_only.sessions.loaded
    assert load_bundle(b).summary()["reads_images"] is False and load_bundle(DEFAULT_BUNDLE).summary()["reads_images"]
    from click.testing import CliRunner

    from lr_onnx.cli import main

    res = CliRunner().invoke(main, ["info", "--bundle", str(b)])
    assert res.exit_code == 0 and "the question only (trained on text alone)" in res.output
