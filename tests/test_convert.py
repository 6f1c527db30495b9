"""Converters on fixtures written to the published layouts (method.md §6.3, §6.4), including their error paths."""

from __future__ import annotations

import base64
import csv
import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from lr_onnx.export.data.convert import (
    convert_mmr,
    convert_vl_routerbench,
    load_plain_pickle,
    mmr_image_for,
    safe_extract,
)
from lr_onnx.export.data.format import load_dataset
from lr_onnx.runtime.errors import DataError


def png_bytes(color=(255, 0, 0), size=(8, 6)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, "PNG")
    return b.getvalue()


# ----------------------------------------------------------------------------- MMR-Bench


def write_mmr(root, rows=None, extra_cols=()):
    root.mkdir(parents=True, exist_ok=True)
    (root / "MMStar").mkdir()
    (root / "MMStar" / "12.jpg").write_bytes(png_bytes())
    (root / "SEEDBenchv2Plus").mkdir()
    (root / "SEEDBenchv2Plus" / "0.png").write_bytes(png_bytes((0, 255, 0)))
    header = [
        "dataset_idx",
        "question",
        "answer",
        "m1_correct",
        "m1_cost",
        "m1_prediction",
        "m2_correct",
        "m2_cost",
        "m2_token",
        "ghost_correct",
        "other_cost",
        *extra_cols,
    ]
    rows = rows or [
        ["MMStar_12", "What colour?", "red", "True", "0.002", "red", "0", "0.001", "5", "1", "0.3"],
        ["SEEDBench2_Plus_0", "Which?", "B", "yes", "0.002", "B", "0.7", "0.001", "7", "1", "0.3"],
        ["OCRBench_5", "Read it", "x", "0", "", "y", "1", "0.001", "", "0", "0.3"],
    ]
    with open(root / "MMR_Bench.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return root


def test_mmr_prefix_mapping_takes_the_longest_prefix():
    assert mmr_image_for("SEEDBench2_Plus_0") == ("SEEDBench2_Plus", "SEEDBenchv2Plus", "0")
    assert mmr_image_for("MathVista_3") == ("MathVista", "MathVista", "3")
    assert mmr_image_for("Unknown_1") == (None, None, None)


def test_mmr_converts_scores_costs_images_and_models(tmp_path):
    summary = convert_mmr(write_mmr(tmp_path / "src"), tmp_path / "out")
    d = load_dataset(tmp_path / "out")
    assert d.model_names == ["m1", "m2"]  # ghost lacks _cost, other lacks _correct
    assert summary == {"rows": 3, "models": 2, "missing_images": 1}
    assert d.ids == ["MMStar_12", "SEEDBench2_Plus_0", "OCRBench_5"]
    assert d.dataset == ["MMStar", "SEEDBench2_Plus", "OCRBench"]
    np.testing.assert_array_equal(d.Y[:, 0][:2], [1, 1])
    assert d.Y[1, 1] == 1.0  # 0.7 rounds to 1, and is counted as non-binary
    assert not d.A[2, 0] and d.A[2, 1]  # empty cost makes m1 unavailable on row 3
    assert [p.name for p in d.images[0]] == ["12.jpg"] and d.images[2] == []
    assert d.Tok[0, 1] == 5
    manifest = json.loads((tmp_path / "out" / "dataset_manifest.json").read_text())
    assert manifest["non_binary_scores"] == 1 and len(manifest["source_sha256"]) == 64


def test_mmr_duplicate_dataset_idx_gets_question_hash(tmp_path):
    rows = [
        ["MMStar_12", "q one", "a", "1", "0.1", "", "0", "0.1", "", "", ""],
        ["MMStar_12", "q two", "a", "0", "0.1", "", "1", "0.1", "", "", ""],
    ]
    convert_mmr(write_mmr(tmp_path / "src", rows), tmp_path / "out")
    ids = load_dataset(tmp_path / "out").ids
    assert len(set(ids)) == 2 and all(i.startswith("MMStar_12#") and len(i) == len("MMStar_12#") + 8 for i in ids)


def test_mmr_garbage_correctness_is_an_error_and_leaves_nothing(tmp_path):
    rows = [["MMStar_12", "q", "a", "maybe", "0.1", "", "0", "0.1", "", "", ""]]
    with pytest.raises(DataError, match=r"MMR_Bench.csv:2: m1_correct value 'maybe' is not a boolean"):
        convert_mmr(write_mmr(tmp_path / "src", rows), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_mmr_refuses_existing_output_and_missing_csv(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="already exists"):
        convert_mmr(write_mmr(tmp_path / "src"), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MMR_Bench.csv"):
        convert_mmr(tmp_path / "empty", tmp_path / "out2")


def test_mmr_official_split_reproduces_sklearn(tmp_path):
    rows = [[f"MMStar_{i}", f"q{i}", "a", "1", "0.1", "", "0", "0.1", "", "", ""] for i in range(20)]
    convert_mmr(write_mmr(tmp_path / "src", rows), tmp_path / "out", official_split=True)
    d = load_dataset(tmp_path / "out")
    from sklearn.model_selection import train_test_split

    train, _ = train_test_split(list(range(20)), train_size=0.2, shuffle=True, random_state=42)
    assert [i for i, s in enumerate(d.split) if s == "train"] == sorted(train)


def test_mmr_images_archive_is_extracted_safely(tmp_path):
    src = write_mmr(tmp_path / "src")
    import shutil

    with tarfile.open(src / "images.tar.gz", "w:gz") as tf:
        tf.add(src / "MMStar", arcname="MMStar")
        tf.add(src / "SEEDBenchv2Plus", arcname="SEEDBenchv2Plus")
    shutil.rmtree(src / "MMStar")
    shutil.rmtree(src / "SEEDBenchv2Plus")
    convert_mmr(src, tmp_path / "out")
    d = load_dataset(tmp_path / "out")
    assert sum(bool(im) for im in d.images) == 2
    assert not (tmp_path / "out" / ".extracted").exists()


# ----------------------------------------------------------------------------- safe extraction


def _tar_with(tmp_path, add):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        add(tf)
    return path


def _member(tf, name, data=b"x", **kw):
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    info.size = len(data) if info.type == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    "name,kw,pattern",
    [
        ("/etc/evil", {}, "absolute or '..'"),
        ("a/../../evil", {}, "absolute or '..'"),
        ("link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "is a link"),
        ("hard", {"type": tarfile.LNKTYPE, "linkname": "x"}, "is a link"),
        ("dev", {"type": tarfile.CHRTYPE}, "device or special"),
        ("fifo", {"type": tarfile.FIFOTYPE}, "device or special"),
    ],
)
def test_safe_extract_rejects_escapes_links_and_devices(tmp_path, name, kw, pattern):
    path = _tar_with(tmp_path, lambda tf: _member(tf, name, **kw))
    with pytest.raises(DataError, match=pattern):
        safe_extract(path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_safe_extract_caps_members_and_size(tmp_path):
    path = _tar_with(tmp_path, lambda tf: [_member(tf, f"f{i}", b"12345") for i in range(5)])
    with pytest.raises(DataError, match="more than 3 members"):
        safe_extract(path, tmp_path / "d1", max_members=3)
    with pytest.raises(DataError, match="more than 12 bytes"):
        safe_extract(path, tmp_path / "d2", max_bytes=12)
    safe_extract(path, tmp_path / "d3")
    assert sorted(p.name for p in (tmp_path / "d3").iterdir()) == [f"f{i}" for i in range(5)]


def test_restricted_unpickler_loads_plain_data_and_refuses_objects(tmp_path):
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps({"m1": 0, "m2": 1}))
    assert load_plain_pickle(tmp_path / "ok.pkl") == {"m1": 0, "m2": 1}
    (tmp_path / "np.pkl").write_bytes(pickle.dumps(np.array([1, 2])))
    with pytest.raises(DataError, match="provide a text sidecar"):
        load_plain_pickle(tmp_path / "np.pkl")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_plain_pickle(tmp_path / "evil.pkl")


# ----------------------------------------------------------------------------- VL-RouterBench Layout A


def write_layout_a(root, *, with_sample_ids=True):
    import pyarrow as pa
    import pyarrow.parquet as pq

    mat, reg = root / "data" / "matrices", root / "data" / "registry"
    mat.mkdir(parents=True)
    reg.mkdir(parents=True)
    sids = ["MMStar/0", "MMStar/1", "ChartQA_TEST/0", "ChartQA_TEST/1"]
    Y = np.array([[1, 0], [0, 1], [1, 1], [np.nan, 0]], dtype=float)
    C = np.array([[0.01, 0.001], [0.02, 0.002], [0.03, 0.003], [0.04, 0.004]])
    np.savez(mat / "Y.npz", Y=Y)
    if with_sample_ids:  # C rows stored in reverse order, aligned through sample_ids.pkl
        np.save(mat / "C.npy", C[::-1])
        (mat / "sample_ids.pkl").write_bytes(pickle.dumps(sids[::-1]))
    else:
        np.save(mat / "C.npy", C)
    (mat / "cost_bounds.json").write_text(json.dumps({"cmin": 5e-4, "cmax": 0.01}))
    pq.write_table(
        pa.table({"sample_id": sids, "dataset": ["MMStar", "MMStar", "ChartQA_TEST", "ChartQA_TEST"]}),
        reg / "meta.parquet",
    )
    (reg / "model_index.pkl").write_bytes(pickle.dumps({"GPT4o": 0, "SmolVLM2": 1}))
    (root / "SPLITS").mkdir()
    (root / "SPLITS" / "train.jsonl").write_text('{"sample_id": "MMStar/0"}\n{"sample_id": "ChartQA_TEST/1"}\n')
    (root / "SPLITS" / "dev.jsonl").write_text('{"sample_id": "MMStar/1"}\n')
    (root / "SPLITS" / "test.jsonl").write_text('{"sample_id": "ChartQA_TEST/0"}\n')
    bench = root / "BENCHMARKS" / "general"
    bench.mkdir(parents=True)
    recs = [
        {
            "sample_id": "MMStar/0",
            "dataset": "MMStar",
            "prompt": "What is red?",
            "assets": [{"type": "image_tsv", "tsv_file": "/abs/ignored/MMStar.tsv", "index": 0}],
        },
        {
            "sample_id": "MMStar/1",
            "dataset": "MMStar",
            "prompt": "Same picture?",
            "assets": [{"type": "image_tsv", "tsv_file": "MMStar.tsv", "index": 1}],
        },
        {
            "sample_id": "ChartQA_TEST/0",
            "dataset": "ChartQA_TEST",
            "prompt": "Broken image",
            "assets": [{"type": "image_tsv", "tsv_file": "MMStar.tsv", "index": 2}],
        },
    ]
    (bench / "mmstar_samples.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    tsv = root / "TSV_images"
    tsv.mkdir()
    b64 = base64.b64encode(png_bytes()).decode()
    (tsv / "MMStar.tsv").write_text("index\timage\tquestion\n0\t" + b64 + "\tq\n1\t0\tq\n2\tnot-base64!!\tq\n")
    return root


def test_layout_a_aligns_costs_splits_text_and_tsv_images(tmp_path):
    summary = convert_vl_routerbench(write_layout_a(tmp_path / "vl"), tmp_path / "out")
    d = load_dataset(tmp_path / "out")
    assert summary["layout"] == "A" and summary["images_failed"] == 1
    assert d.model_names == ["GPT4o", "SmolVLM2"]
    assert d.split == ["train", "val", "test", "train"]
    np.testing.assert_allclose(d.C[:3, 0], [0.01, 0.02, 0.03])  # realigned through sample_ids.pkl
    assert d.C[3, 1] == pytest.approx(0.004)
    assert not d.A[3, 0] and d.A[3, 1]
    assert d.question[0] == "What is red?"
    assert len(d.images[0]) == 1 and len(d.images[1]) == 1  # row 1 refers to row 0's image by index
    assert d.images[2] == []  # undecodable base64 counted, not a crash
    assert json.loads((tmp_path / "out" / "cost_bounds.json").read_text())["cmax"] == 0.01
    models = json.loads((tmp_path / "out" / "models.json").read_text())
    assert models[0]["price_in_per_mtok"] == 2.5


def test_layout_a_rejects_out_of_range_scores_and_object_pickles(tmp_path):
    root = write_layout_a(tmp_path / "vl")
    np.savez(root / "data" / "matrices" / "Y.npz", Y=np.array([[2.0, 0], [0, 1], [1, 1], [0, 0]]))
    with pytest.raises(DataError, match="outside \\[0, 1\\]"):
        convert_vl_routerbench(root, tmp_path / "out")
    root2 = write_layout_a(tmp_path / "vl2")
    (root2 / "data" / "registry" / "model_index.pkl").write_bytes(pickle.dumps(np.array(["a", "b"])))
    with pytest.raises(DataError, match="sidecar"):
        convert_vl_routerbench(root2, tmp_path / "out2")
    (root2 / "data" / "registry" / "models.txt").write_text("GPT4o\nSmolVLM2\n")
    assert convert_vl_routerbench(root2, tmp_path / "out3")["models"] == 2


@pytest.mark.parametrize("rel", ["SPLITS/dev.jsonl", "BENCHMARKS/general/mmstar_samples.jsonl"])
def test_layout_a_malformed_jsonl_line_is_a_one_line_error(tmp_path, rel):
    root = write_layout_a(tmp_path / "vl")
    with open(root / rel, "a") as fh:
        fh.write('{"sample_id": \n')
    with pytest.raises(DataError, match=r"\.jsonl:\d+: malformed JSON"):
        convert_vl_routerbench(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- VL-RouterBench Layout B


def _xlsx(path, header, rows):
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(header)
    for r in rows:
        ws.append(r)
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)


def write_layout_b(root):
    ev = root / "vlm_router_data" / "VLMEvalKit_evaluation"
    _xlsx(
        ev / "GPT4o" / "GPT4o_MMStar_openai_result.xlsx",
        ["index", "question", "A", "B", "prediction", "hit"],
        [[0, "Pick one", "cat", "dog", "A", 1], [1, "Pick two", "x", "y", "B", 0]],
    )
    _xlsx(ev / "GPT4o" / "GPT4o_MMStar_acc.xlsx", ["index", "hit"], [[0, 0], [1, 1]])  # auxiliary: ignored
    _xlsx(
        ev / "SmolVLM2" / "SmolVLM2_MMStar_results.xlsx",
        ["index", "question", "prediction", "score"],
        [[0, "Pick one", "B", 0.0], [1, "Pick two", "B", 1.0]],
    )
    _xlsx(
        ev / "SmolVLM2" / "SmolVLM2_MathVista_MINI_gpt-4o-mini.xlsx",
        ["index", "question", "hint", "prediction", "is_correct", "score"],
        [[5, "Solve", "use pi", "3.14", "true", 0]],
    )
    _xlsx(ev / "SmolVLM2" / "SmolVLM2_Unknown_results.xlsx", ["index", "hit"], [[0, 1]])
    tsv = root / "vlm_router_data" / "TSV_images"
    tsv.mkdir(parents=True)
    b64 = base64.b64encode(png_bytes()).decode()
    (tsv / "MMStar.tsv").write_text(f"index\timage\n0\t{b64}\n1\t['{b64}', '{b64}']\n")
    return root


def test_layout_b_reads_hit_score_is_correct_and_costs(tmp_path):
    summary = convert_vl_routerbench(write_layout_b(tmp_path / "raw"), tmp_path / "out")
    d = load_dataset(tmp_path / "out")
    assert summary["layout"] == "B" and summary["cost_mode"] == "approx_text_tokens"
    assert any("unknown dataset" in w for w in summary["warnings"])
    assert d.model_names == ["GPT4o", "SmolVLM2"]
    row = {i: j for j, i in enumerate(d.ids)}
    assert d.Y[row["MMStar/0"]].tolist() == [1.0, 0.0]  # hit from _openai_result, not the _acc file
    assert d.Y[row["MMStar/1"]].tolist() == [0.0, 1.0]
    assert d.Y[row["MathVista_MINI/5"], 1] == 1.0 and not d.A[row["MathVista_MINI/5"], 0]  # is_correct wins
    q = d.question[row["MMStar/0"]]
    assert q == "Pick one\nA. cat\nB. dog"
    assert d.question[row["MathVista_MINI/5"]].startswith("Hint: use pi\nSolve")
    tokens_in = 8  # "Pick one\nA. cat\nB. dog" -> Pick one A . cat B . dog
    assert d.C[row["MMStar/0"], 0] == pytest.approx((tokens_in * 2.5 + 1 * 10.0) / 1e6)
    assert len(d.images[row["MMStar/0"]]) == 1 and len(d.images[row["MMStar/1"]]) == 2


def test_layout_b_archive_and_unknown_price(tmp_path):
    raw = write_layout_b(tmp_path / "raw")
    arch = tmp_path / "vlm_router_data.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        tf.add(raw / "vlm_router_data", arcname="vlm_router_data")
    assert convert_vl_routerbench(arch, tmp_path / "out")["rows"] == 3
    _xlsx(
        raw / "vlm_router_data" / "VLMEvalKit_evaluation" / "NewModel" / "NewModel_MMStar_results.xlsx",
        ["index", "question", "prediction", "hit"],
        [[0, "Pick one", "A", 1]],
    )
    with pytest.raises(DataError, match="'NewModel' has no published price"):
        convert_vl_routerbench(raw, tmp_path / "out2")


def test_vl_unknown_layout_is_a_clear_error(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="neither data/matrices/"):
        convert_vl_routerbench(tmp_path / "x", tmp_path / "out")
