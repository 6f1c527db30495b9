"""The human-readable side of an evaluation: report.md's text and frontier.png, from metrics.json's content."""

from __future__ import annotations

from pathlib import Path


def plot_frontier(path: Path, curves: dict, out: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, curve in curves.items():
        pts = sorted((p["cost"], p["score"]) for p in curve)
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker="." if name != "latentrouter" else "o",
            lw=2.5 if name == "latentrouter" else 1.2,
            label=name,
        )
    for name, s in out["single_models"].items():
        if s["score"] is None or s["cost"] is None:  # a model with no outcome on this split
            continue
        ax.scatter(s["cost"], s["score"], marker="x", color="gray")
        ax.annotate(name, (s["cost"], s["score"]), fontsize=6, color="gray")
    r = out["methods"]["random"]
    ax.scatter(r["cost_at_lambda0"], r["score_at_lambda0"], marker="s", color="black", label="random")
    ax.scatter(out["oracle"]["cost"], out["oracle"]["score"], marker="*", s=150, color="gold", label="oracle")
    ax.set_xscale("log")
    ax.set_xlabel("mean realised cost per query (USD, log scale)")
    ax.set_ylabel("mean score")
    ax.set_title(f"cost-quality frontier on the {out['split']} split ({out['rows']} queries)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def report(out: dict) -> str:
    cols = [
        "nauc",
        "nauc_ref",
        "peak_score",
        "qnc",
        "rank_score",
        "apgr",
        "cpt50",
        "cpt80",
        "aiq",
        "score_at_lambda0",
        "cost_at_lambda0",
    ]
    lines = [
        f"# Evaluation on the {out['split']} split ({out['rows']} queries, {out['data']})",
        "",
        f"Best single model on these rows (in hindsight): {out['best_single']['name']} "
        f"{out['best_single']['score']:.4f} at {out['best_single']['cost']:.4g}; oracle {out['oracle']['score']:.4f} "
        f"at {out['oracle']['cost']:.4g}. The `best_single` row routes every query to the model best on validation. "
        "Lambda for the rank score is chosen on validation.",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, m in out["methods"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
    lines += [
        "",
        "`task_lookup` (best training model per `dataset` label) reads metadata the router never sees: "
        "it is the bar to clear on real data, not a method on equal terms.",
    ]
    lines += [
        "",
        "## Per dataset (LatentRouter at lambda 0)",
        "",
        "| dataset | rows | best single | router | oracle |",
        "|---|---|---|---|---|",
    ]
    for ds, v in out["per_dataset"].items():
        lines.append(
            f"| {ds} | {v['rows']} | {v['best_single']['name']} {_fmt(v['best_single']['score'])} | "
            f"{_fmt(v['latentrouter_score_lambda0'])} | {_fmt(v['oracle'])} |"
        )
    lines += [
        "",
        "## Pool shift (LatentRouter at lambda 0, masked pool)",
        "",
        "| spec | router | best single | oracle | regret vs full |",
        "|---|---|---|---|---|",
    ]
    for spec, v in out["pool_shift"].items():
        if isinstance(v, dict):
            lines.append(
                f"| {spec} | {_fmt(v['score_at_lambda0'])} | {_fmt(v['best_single'])} | {_fmt(v['oracle'])} | "
                f"{_fmt(v['regret_vs_full'])} |"
            )
    lines += [
        "",
        "## Lambda presets (chosen on validation; shipped in the bundle, `lr-onnx route --lambda NAME`)",
        "",
        "| preset | lambda | validation score | validation cost | test score | test cost |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in out["methods"]["latentrouter"].get("presets", {}).items():
        lines.append(
            f"| {name} | {p['lambda']:.4g} | {_fmt(p['val_score'])} | {_fmt(p['val_cost'])} | "
            f"{_fmt(p['test_score'])} | {_fmt(p['test_cost'])} |"
        )
    c = out["collapse"]
    lines += [
        "",
        f"Routing collapse: share of queries sent to the most expensive model at lambda 0 "
        f"{_fmt(c['share_at_lambda0'])} (oracle {_fmt(c['oracle_share'])}).",
    ]
    u = out.get("uncertainty", {})
    if u.get("entries"):
        lines += [
            "",
            f"Uncertainty ({u['entries']} binary entries): ECE {_fmt(u['ece'])}, Brier {_fmt(u['brier'])}, "
            f"Gaussian NLL {_fmt(u['gaussian_nll'])}, coverage of mu +/- 1.96 sigma "
            f"{_fmt(u['coverage_1.96sigma'])}, Spearman(sigma, |y - mu|) {_fmt(u['spearman_sigma_abs_error'])}.",
        ]
    return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:.4g}"
