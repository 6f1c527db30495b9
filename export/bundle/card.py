"""The model card of a bundle (`BUNDLE/README.md`): what it was trained on, for whom, how well, and where it is blind.

    python -m lr_onnx.export.bundle.card RUN_DIR BUNDLE_DIR --sources blindtest,dynamath,vqarad

Every number comes from the run's metrics.json (test split) and the bundle's manifest; the licence lines
are the project's summary of each source's own README in ../shared/data. The card is not listed in the
manifest (the runtime never reads it), so writing it changes no hash.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...runtime.bundle import load_bundle
from ...runtime.memory_sources import VOTE_K
from ..files import atomic_write_text
from ..train.rundir import METRICS, RunDir

# The project's reading of each source's README (../shared/data/NAME/README.md, section "License").
SOURCES = {
    "blindtest": ("low-level visual perception (line intersections, circles, counting, paths)", "MIT"),
    "dynamath": (
        "math questions over diagrams and plots",
        "no LICENSE file; the repository's README shows an MIT badge",
    ),
    "vqarad": (
        "closed radiology questions (CT, MRI, X-ray)",
        "no LICENSE file for the model answers; questions and images are VQA-RAD, CC0 1.0 (images from MedPix)",
    ),
    "inkbench": (
        "full-page transcription of historical documents (score 1 - CER)",
        "no license: all rights reserved by default; evaluation and user-built bundles only",
    ),
}


def card(run_dir: Path, bundle_dir: Path, sources: list[str]) -> str:
    m = RunDir.of(run_dir).read_json(METRICS)
    man = load_bundle(bundle_dir).manifest
    cfg = RunDir.of(run_dir).config()
    lr = m["methods"]["latentrouter"]
    pool = man.pool
    mem = man.memory
    threshold = man.coverage.threshold if man.coverage is not None else float("nan")
    lines = [
        "# The default lr-onnx bundle: model card",
        "",
        "A LatentRouter bundle that picks, per image+question query, one of the multimodal models below by "
        "predicted quality minus lambda x expected cost. Written by `python -m lr_onnx.export.bundle.card` from the "
        "run's test metrics and this manifest (`scripts/build_default_bundle.sh` rebuilds both).",
        "",
        "## Data and licences",
        "",
        "| source | domain | licence (from its README in ../shared/data) |",
        "|---|---|---|",
    ]
    for s in sources:
        dom, lic = SOURCES.get(s, ("(not described)", "see the source's README"))
        lines.append(f"| {s} | {dom} | {lic} |")
    lines += [
        "",
        "The bundle ships no question, image or answer text. It holds each model's profile (shrunk mean "
        "scores per k-means slice), and its capability memory: for each training query a 128-number "
        "projection of its encoder vectors (not invertible to the text or the image) and each model's "
        "0/1 outcome on it."
        if mem
        else "",
        "",
        "## Pool",
        "",
        f"{len(pool)} models (a ragged pool: each source answered by its own models):",
        "",
    ]
    lines += [
        f"- `{p.name}`: expected cost {p.expected_cost_usd:.3g} USD per query"
        + (f", {p.extra['added_with']['queries']} labelled queries (added)" if p.extra.get("added_with") else "")
        for p in pool
    ]
    lines += [
        "",
        "## Test scores (held-out test split, lambda 0)",
        "",
        f"Overall: LatentRouter **{lr['score_at_lambda0']:.4f}** (nAUC {lr['nauc']:.4f}); best single model "
        f"{m['best_single']['name']} {m['best_single']['score']:.4f}; oracle {m['oracle']['score']:.4f}; "
        f"{m['rows']} queries.",
        "",
        "| source | queries | LatentRouter | its memory alone | kNN | best single | oracle |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in m["per_dataset"].items():
        if not key.startswith("source:"):
            continue
        s0 = r["score_at_lambda0"]
        lines.append(
            f"| {key.split(':', 1)[1]} | {r['rows']} | {r['latentrouter_score_lambda0']:.4f} | "
            f"{_f(s0.get('memory_only'))} | {_f(s0.get('knn'))} | {r['best_single']['name']} "
            f"{r['best_single']['score']:.4f} | {r['oracle']:.4f} |"
        )
    lines += ["", "## How it decides", ""]
    choice = cfg.get("modality")
    if choice:  # export.train.modality
        lines.append(
            "- Reads "
            + (
                "the question and its images"
                if man.reads_images
                else "the question only, never running the image encoder"
            )
            + f": validation compared the router with images and its text-only twin (paired z {choice['z']:.2f}; "
            f"text only needs {choice['z_needed']:.2f})."
        )
    if mem:
        st = mem.settings
        blend = (cfg.get("memory") or {}).get("blend", {}).get("chosen")
        lines += [
            f"- Capability memory: {mem.rows:,} labelled training queries; each model's estimate is the "
            f"shrunk mean outcome of the query's {st.k} nearest ones (pseudo-count {st.kappa:g} of the "
            f"model's global mean), weighted by closeness. Settings chosen on validation."
            + (
                f" Per source of the merge, by the source most of the query's {VOTE_K} nearest come from: "
                + ", ".join(f"{n} {s.k} nearest (pseudo-count {s.kappa:g})" for n, s in mem.sources)
                + "."
                if mem.sources
                else ""
            )
            + (
                f" The network corrects it with strength {blend:g} (chosen on validation; 0 = the memory alone)."
                if blend is not None
                else ""
            )
        ]
    lines += [
        f"- Coverage rule: a query is flagged out of coverage when its best cosine similarity to the training "
        f"slices is below {threshold:.3f} (the 1st percentile of the training queries' "
        f"own)"
        + (
            ", or when its closeness to the memory's nearest labelled queries is below 0.1: there every "
            "model's estimate is its global mean, and the router picks the model with the best global "
            "mean minus lambda x cost"
            if mem
            else ""
        )
        + ".",
        "",
        "## Known limits",
        "",
        "- The memory speaks for queries close to its labelled ones (closeness >= 0.1): the benchmarks' own test "
        "queries are, and a picture like theirs asked their kind of question can be (the shipped "
        f'`{EXAMPLE[0]}` with "{EXAMPLE[1]}": closeness {_closeness(bundle_dir, EXAMPLE[1]):.2f}); the same '
        f'picture asked "{EVERYDAY}" is not (closeness {_closeness(bundle_dir, EVERYDAY):.2f}). There every model '
        "scores its global mean and the router picks the best mean-minus-cost model. Documents, business charts, "
        "screenshots, natural photos and text-only questions are all in that case: train on your own outcome "
        "logs for per-query routing there."
        if mem
        else "",
        "- Costs are estimates from list prices and image-token rules, not invoices.",
        "- The outcomes are benchmark grades (right / wrong on closed questions), not human preference.",
        "- Models added with `lr-onnx models add` are profiled from their labelled queries only.",
        "",
    ]
    return "\n".join(lines)


EXAMPLE = ("lines.png", "How many times do the two lines intersect?")  # drawn like blindtest's line plots
EVERYDAY = "What does this show?"  # an everyday question about the same picture


def _closeness(bundle_dir: Path, question: str) -> float:
    """The memory closeness of EXAMPLE's picture asked `question`, measured with the bundle itself (the runtime)."""
    from ...runtime.router import DEFAULT_BUNDLE, Router

    d = Router.load(bundle_dir).route([DEFAULT_BUNDLE.parent / "examples" / EXAMPLE[0]], question)
    return float(d.coverage.get("memory_closeness", float("nan"))) if d.coverage else float("nan")


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("bundle_dir", type=Path)
    ap.add_argument("--sources", default="blindtest,dynamath,vqarad")
    a = ap.parse_args(argv)
    atomic_write_text(a.bundle_dir / "README.md", card(a.run_dir, a.bundle_dir, a.sources.split(",")))
    print(f"wrote {a.bundle_dir / 'README.md'}")


if __name__ == "__main__":
    main()
