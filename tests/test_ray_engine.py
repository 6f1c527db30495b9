"""`route-batch --engine ray` (issue 15 §7): a local Ray with 2 CPUs gives exactly the local engine's decisions."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # starting Ray costs ~5 s

from conftest import REPO  # noqa: E402
from lr_onnx.cli import main  # noqa: E402

EX = REPO / "assets" / "examples"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _rows(n):
    return [
        {"id": f"q{i}", "question": f"What is {i} plus {i}?", "images": [str(EX / "chart.png")] if i % 3 == 0 else []}
        for i in range(n)
    ]


def test_ray_engine_matches_the_local_engine(local_ray, runner, tmp_path):
    inp = tmp_path / "in.jsonl"
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = [
        {"id": "bad-uri", "question": "q", "images": ["file:///nonexistent/nowhere.png"]},
        {"id": "bad-image", "question": "q", "images": [str(tmp_path / "broken.png")]},
    ]
    rows = _rows(14)
    rows[3:3] = bad  # in the middle of a batch: its batch-mates are still routed, and the job goes on
    inp.write_text(
        "\n".join(json.dumps(r) for r in rows)
        + "\nnot json\n"
        + json.dumps({"id": "q1", "question": "a duplicate"})
        + "\n"
    )
    res_local = runner.invoke(
        main, ["route-batch", str(inp), "--out", str(tmp_path / "local.jsonl"), "--lambda", "budget_25"]
    )
    res_ray = runner.invoke(
        main,
        [
            "route-batch",
            str(inp),
            "--out",
            str(tmp_path / "ray.jsonl"),
            "--engine",
            "ray",
            "--lambda",
            "budget_25",
            "--batch-size",
            "4",
            "--log",
            str(tmp_path / "log"),
        ],
    )
    assert res_local.exit_code == res_ray.exit_code == 1, res_ray.output
    local = {d["id"]: d for d in map(json.loads, (tmp_path / "local.jsonl").read_text().splitlines())}
    dist = {d["id"]: d for d in map(json.loads, (tmp_path / "ray.jsonl").read_text().splitlines())}
    assert len(local) == 14 and local.keys() == dist.keys()
    for k in local:  # the same choice; scores equal up to float rounding (batches are cut differently)
        assert dist[k]["model"] == local[k]["model"] and dist[k]["lambda"] == local[k]["lambda"]
        a = {c["name"]: c["utility"] for c in local[k]["candidates"]}
        b = {c["name"]: c["utility"] for c in dist[k]["candidates"]}
        assert a.keys() == b.keys() and max(abs(a[n] - b[n]) for n in a) < 1e-5
    # the actors logged every decision they made, under the ids the output carries (issue 26)
    from lr_onnx.runtime.decisionlog import DECISIONS, log_files, read_records

    logged = {r["id"]: r for r in read_records(log_files(tmp_path / "log", DECISIONS))}
    # (the actors also routed the duplicate id, which the driver then left out of OUT: one decision more)
    assert {d["decision_id"] for d in dist.values()} <= set(logged) and len(logged) == len(dist) + 1
    assert all(logged[d["decision_id"]]["chosen"] == d["model"] for d in dist.values())
    assert "malformed JSON" in res_ray.output and "duplicate id" in res_ray.output
    assert "bad-uri" in res_ray.output and "nowhere.png" in res_ray.output and "bad-image" in res_ray.output
    # resumable like the local engine: a rerun on the same OUT routes nothing new
    again = runner.invoke(
        main,
        ["route-batch", str(inp), "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--lambda", "budget_25"],
    )
    assert "routed 0" in again.output and len((tmp_path / "ray.jsonl").read_text().splitlines()) == 14


def test_ray_engine_reads_csv_and_parquet_and_writes_parquet(local_ray, runner, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(6)
    pq.write_table(
        pa.table(
            {
                "id": [r["id"] for r in rows],
                "question": [r["question"] for r in rows],
                "images": [r["images"] for r in rows],
            }
        ),
        tmp_path / "in.parquet",
    )
    res = runner.invoke(
        main, ["route-batch", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "o.parquet"), "--engine", "ray"]
    )
    assert res.exit_code == 0, res.output
    table = pq.read_table(tmp_path / "o.parquet").to_pylist()
    (tmp_path / "in.csv").write_text(
        "id,question,images\n" + "".join(f"{r['id']},{r['question']},{';'.join(r['images'])}\n" for r in rows)
    )
    res = runner.invoke(
        main, ["route-batch", str(tmp_path / "in.csv"), "--out", str(tmp_path / "c.jsonl"), "--engine", "ray"]
    )
    assert res.exit_code == 0, res.output
    csv_out = {d["id"]: d["model"] for d in map(json.loads, (tmp_path / "c.jsonl").read_text().splitlines())}
    assert {r["id"]: r["model"] for r in table} == csv_out and len(csv_out) == 6
