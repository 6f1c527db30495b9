"""Bundle commands: models propose/add/remove, info, doctor, calibrate."""

from __future__ import annotations

import json
import sys

import click

from .base import (
    Group,
    echo_json,
    main,
    load_router,
    note_dropped,
    printable,
    USD,
    PRICE,
    SEED,
    BUNDLE_OPTION,
    PROVIDER_OPTION,
    ANY_PATH,
    FILE,
    FOLDER,
)
from ..runtime.validate import model_name


@main.group("models", cls=Group)
def models():
    """Change a candidate pool without retraining: a bundle (serving side) or a training run."""


def _pool_target(run_dir, bundle, out):
    if bool(run_dir) == bool(bundle):
        raise click.UsageError("give either RUN_DIR (a training run) or --bundle BUNDLE (with --out)")
    if bundle and not out:
        raise click.UsageError("--bundle needs --out: the edited bundle is written as a copy")


@models.command("propose")
@click.argument("run_dir", required=False, type=FOLDER)
@click.option(
    "--out",
    required=True,
    type=ANY_PATH,
    help="Folder to write (must not exist): queries.jsonl and images/.",
)
@click.option(
    "-b",
    "--bundle",
    type=FOLDER,
    help="Propose from your own queries (--from) for this bundle instead of a training run's rows.",
)
@click.option(
    "--from",
    "from_file",
    type=FILE,
    help="With --bundle: your queries, as route-batch reads them (JSONL or CSV with id, question, images).",
)
@click.option(
    "--n",
    "n",
    type=click.IntRange(min=24),
    default=48,
    show_default=True,
    help="Queries to propose (at least 24): ceil(n / slices) from each capability slice, then a seeded draw "
    "of n of them when that is more.",
)
@click.option("--seed", type=SEED, default=20260308, show_default=True, help="Seed of the draw.")
def models_propose(run_dir, out, bundle, from_file, n, seed):
    """Pick calibration queries for a new model, spread over the router's capability slices.

    From RUN_DIR's calibration rows (a training run), or with --bundle B --from FILE from
    your own queries (no training run, no torch). Run the new model on OUT/queries.jsonl,
    fill each query's outcomes with {"NAME": {"score": ..., "cost": ...}}, then:
    lr-onnx models add RUN_DIR --name NAME --outcomes OUT (or --bundle B --out B2).
    """
    if bool(run_dir) == bool(bundle):
        raise click.UsageError("give a training run (RUN_DIR) or --bundle B --from FILE")
    if bundle and not from_file:
        raise click.UsageError("--bundle needs --from FILE: the queries to choose from")
    if run_dir and from_file:
        raise click.UsageError("--from goes with --bundle; a run proposes from its own calibration rows")
    if run_dir:
        from ..export.train.pool import propose_queries

        rep = propose_queries(run_dir, out, n=n, seed=seed)
        target = run_dir
    else:
        from ..runtime.batch import read_query_file
        from ..runtime.manage import propose_from_queries

        router = load_router(bundle, "auto")
        records, problems = read_query_file(from_file)
        for msg in problems:
            click.echo(f"skipped {printable(msg)}", err=True)
        with click.progressbar(length=len(records), label="encoding", file=sys.stderr) as bar:
            rep = propose_from_queries(router, records, out, n=n, seed=seed, on_progress=bar.update)
        target = f"--bundle {bundle} --out NEW_BUNDLE"
    covered = sum(c > 0 for c in rep["per_slice"])
    short = rep["short_slices"]
    click.echo(
        f"wrote {out}: {rep['queries']} queries from {covered} of {rep['slices']} slices "
        f"(at most {max(rep['per_slice'])} per slice)"  # a bundle's round robin may go past ceil(n / S) to reach n
        + (f"; slices {short} have fewer candidate queries" if short else "")
        + f"; fill in outcomes[NAME], then: lr-onnx models add {target} --name NAME --outcomes {out}"
    )


@models.command("add")
@click.argument("run_dir", required=False, type=FOLDER)
@click.option("-b", "--bundle", type=FOLDER, help="Bundle to extend.")
@click.option("--out", type=ANY_PATH, help="Where to write the extended copy of --bundle.")
@click.option(
    "--name",
    required=True,
    help="Name of the new model, as --models will name it: no comma, control character or outer space.",
)
@click.option("--price-in", type=PRICE, help="USD per 1M input tokens.")
@click.option("--price-out", type=PRICE, help="USD per 1M output tokens.")
@click.option(
    "--outcomes",
    required=True,
    type=click.Path(exists=True, path_type=str),
    help="queries.jsonl (or a native folder) with outcomes[NAME] = {score, cost, ...} on labelled queries.",
)
@click.option(
    "--image-tokens",
    metavar="RULE",
    help="The model's image-token rule, for per-query expected costs (with --bundle and --price-in): "
    "openai-high-detail, claude-pixels-div-750, gemini-258, qwen2-vl-28px, internvl2-448-tiles, "
    'llava-next-anyres, mllama-560-tiles, fixed-576, or JSON such as \'{"rule": "fixed", '
    '"tokens": 300}\'.',
)
def models_add(run_dir, bundle, out, name, price_in, price_out, outcomes, image_tokens):
    """Add a model from a few labelled queries (48 recommended, 24 minimum); the network is not retrained.

    Its capability profile is built with the frozen slices and standardisation, so it
    routes immediately. In a bundle with a capability memory (the default bundle has one)
    its labelled queries join the memory, and the router answers for it with the memory's
    estimate (the network never saw it), whose prior is a line in how hard the trained
    models find each query, fitted on its labels. With --bundle this needs no torch; a
    fused.onnx is left out of the new bundle (it bakes in the old pool).
    """
    _pool_target(run_dir, bundle, out)
    name = model_name(name)  # before the outcomes are read for it
    if image_tokens and image_tokens.lstrip().startswith("{"):
        try:
            image_tokens = json.loads(image_tokens)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"not valid JSON ({e})", param_hint="--image-tokens") from None
    if run_dir and image_tokens:
        raise click.UsageError(
            "--image-tokens applies to a bundle (--bundle B --out B2); a training run takes the "
            "rule from its dataset's models.json"
        )
    if run_dir:
        from ..export.train.pool import add_model

        rep = add_model(run_dir, name, outcomes, price_in=price_in, price_out=price_out)
    else:
        from ..export.data.format import labelled_queries, load_outcomes_for
        from ..runtime.manage import add_model as add_to_bundle

        rows = labelled_queries(load_outcomes_for(outcomes, name))
        rep = add_to_bundle(
            load_router(bundle, "auto"),
            out,
            name,
            *rows,
            price_in=price_in,
            price_out=price_out,
            image_tokens=image_tokens,
        )
    click.echo(
        f"added {name}: {rep['queries']} labelled queries, observed score {rep['observed_score']:.3f}, "
        f"predicted {rep['predicted_score']:.3f}, expected cost {rep['expected_cost']:.4g} per query "
        f"({rep['cost_estimator']}"
        + (f"; observed {rep['observed_cost']:.4g}" if "observed_cost" in rep else "")
        + f"); queries per slice {rep['slice_counts']}"
    )
    if rep.get("pool_scores"):
        click.echo("predicted mu_tilde on these labelled queries, by model (the new one last):")
        for n, v in sorted(rep["pool_scores"].items(), key=lambda kv: (kv[0] == name, -kv[1])):
            click.echo(f"  {n[:32]:32s} {v:.3f}" + ("  (observed %.3f)" % rep["observed_score"] if n == name else ""))
    lp = rep.get("local_prior")
    if lp:
        click.echo(
            f"its estimate's prior: {lp['intercept']:.3f} + {lp['slope']:.3f} x the trained models' mean estimate "
            f"for the query (slope shrunk by its evidence; 0 = the same prior everywhere)"
        )
    for w in rep["warnings"]:
        click.echo(f"warning: {w}", err=True)
    note_dropped(rep.get("dropped", []))


@models.command("remove")
@click.argument("run_dir", required=False, type=FOLDER)
@click.option(
    "-b",
    "--bundle",
    type=FOLDER,
    help="A bundle to remove the model from (it is copied to --out, never changed).",
)
@click.option("--out", type=ANY_PATH, help="Where to write the reduced copy of --bundle.")
@click.option("--name", required=True, help="The pool model to remove (`lr-onnx info` lists the pool).")
def models_remove(run_dir, bundle, out, name):
    """Remove a model from a pool (RUN_DIR in place, or a copy of --bundle at --out)."""
    _pool_target(run_dir, bundle, out)
    if run_dir:
        from ..export.train.pool import remove_model

        remove_model(run_dir, name)
        dropped = []
    else:
        from ..runtime.manage import remove_model as remove_from_bundle

        dropped = remove_from_bundle(bundle, out, name)
    click.echo(f"removed {name}" + (f"; wrote {out}" if out else ""))
    note_dropped(dropped)


@main.command("info")
@BUNDLE_OPTION
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the same facts as JSON (pool, graphs, preprocessing, lambda and presets, coverage, providers, digest).",
)
def info_cmd(bundle, as_json):
    """Show a bundle: pool and prices, graphs, preprocessing, lambda, available providers."""
    from ..runtime.bundle import load_bundle
    from ..runtime.router import DEFAULT_BUNDLE
    from ..runtime.sessions import ort

    b = load_bundle(bundle or DEFAULT_BUNDLE)
    if as_json:
        echo_json({**b.summary(), "providers_available": ort().get_available_providers()})
        return
    for line in info_lines(b):
        click.echo(line)
    click.echo(f"\nproviders available: {', '.join(ort().get_available_providers())}")


def info_lines(b) -> list[str]:
    """`lr-onnx info`'s text: one section per kind of fact (identity, pool, graphs, preprocessing, routing)."""
    from ..runtime.memory import MIN_CLOSENESS
    from ..runtime.memory_sources import VOTE_K

    m = b.manifest
    out = [
        f"bundle  {b.path}",
        f"        schema {m.schema_version}, {m.precision or '?'}, opset {m.opset or '?'}, "
        f"setting {m.setting or '?'}, encoders {m.encoder_version or '?'}, digest {b.digest[:16]}",
        *([f"        warning: {failed}"] if (failed := b.parity_failure()) else []),
        "",
        f"pool ({len(m.pool)} model{'' if len(m.pool) == 1 else 's'})",
        f"  {'model':28s} {'$/M in':>8s} {'$/M out':>8s} {'exp. cost $':>12s}  per-query cost",
    ]
    for p in m.pool:
        pi, po, rule = p.price_in_per_mtok, p.price_out_per_mtok, p.image_tokens
        rule = rule if isinstance(rule, str) else (rule or {}).get("rule")
        how = (
            f"{rule}, {p.output_tokens:g} output tokens" if rule and p.output_tokens is not None else "- (the constant)"
        )
        out.append(
            f"  {p.name[:28]:28s} {'-' if pi is None else f'{pi:g}':>8s} "
            f"{'-' if po is None else f'{po:g}':>8s} {p.expected_cost_usd:>12.3g}  {how}"
        )
    out += ["", "graphs"]
    for name, g in m.graphs.items():
        size = b.file(g.file).stat().st_size / 1e6
        shapes = ", ".join(f"{k} [{', '.join(map(str, v))}]" for k, v in g.inputs.items()) or "?"
        out.append(f"  graph {name:14s} {g.file:20s} {size:6.1f} MB  inputs {shapes}")
    im = m.image
    out += [
        "",
        "preprocessing",
        f"  image  letterbox to {im.size} px ({im.resample}), mean {' '.join(f'{x:g}' for x in im.mean)}, "
        f"std {' '.join(f'{x:g}' for x in im.std)}",
        f"  text   {m.text.tokenizer_file}, at most {m.text.max_tokens} tokens",
        "  reads  "
        + ("the question and its images" if m.reads_images else "the question only (trained on text alone)"),
        "",
        "routing",
    ]
    calibrated = m.lambdas.extra.get("calibrated")
    out.append(
        f"  lambda    default {m.lambdas.default:g}"
        + (f" (calibrated: {calibrated.get('target')})" if isinstance(calibrated, dict) else "")
        + "; presets (--lambda NAME):"
    )
    for name, preset in m.lambdas.presets.items():
        vs, vc = preset.extra.get("val_score"), preset.extra.get("val_cost")
        score = (
            f"validation score {vs:.3f} at ${vc:.2e}/query"
            if isinstance(vs, (int, float)) and isinstance(vc, (int, float))
            else ""
        )
        out.append(f"    --lambda {name}: {preset.lam:g}  {score}".rstrip())
    if m.coverage is not None:
        out.append(
            f"  coverage  a query is flagged out of coverage below similarity {m.coverage.threshold:.4f} to "
            f"the slice centroids (the training queries' {m.coverage.percentile:g}st percentile)"
        )
    mem = m.memory
    if mem is not None:
        st = mem.settings
        blend = "?" if mem.blend is None else f"{mem.blend:g}"
        out += [
            f"  memory    {mem.rows:,} labelled queries x {len(mem.models)} models in {mem.dim} dimensions; "
            f"estimates from the {st.k} nearest (pseudo-count {st.kappa:g})"
            + (
                f"; per source, by the vote of the {VOTE_K} nearest: "
                + ", ".join(f"{n} {s.k} (pseudo-count {s.kappa:g})" for n, s in mem.sources)
                if mem.sources
                else ""
            ),
            f"            network correction {blend} (0 = the memory alone); closeness < {MIN_CLOSENESS:g} "
            f"is flagged out of coverage too",
        ]
    if m.refreshed:
        r = m.refreshed
        out.append(
            f"  refreshed {r.get('refreshes', 1)} time(s) from logged feedback ({r.get('records', '?')} labelled "
            f"decision(s) the last time; {r.get('feedback_rows', 0)} memory rows from feedback in all)"
        )
    return out


@main.command("doctor")
@BUNDLE_OPTION
@PROVIDER_OPTION
def doctor_cmd(bundle, provider):
    """Check the installation: ONNX Runtime wheels, providers bound, bundle hashes, golden parity."""
    from ..runtime.manage import check_golden
    from ..runtime.sessions import installed_ort_distributions, ort

    problems = 0
    dists = installed_ort_distributions()
    click.echo(f"onnxruntime wheels: {', '.join(dists) or 'none'}")
    if len(dists) > 1:
        problems += 1
        click.echo(
            "  PROBLEM: several onnxruntime wheels are installed and overwrite each other; "
            "pip uninstall them all, then install one of lr-onnx[cpu] / lr-onnx[gpu]"
        )
    rt = ort()
    click.echo(f"providers available: {', '.join(rt.get_available_providers())}")
    router = load_router(bundle, provider)  # verifies every sha256
    click.echo(
        f"bundle {router.bundle.path}: closed, {len(router.bundle.manifest.files)} listed files, sha256 verified"
    )
    for name, bound in router.bound_providers().items():
        click.echo(f"  {name}: bound {', '.join(bound)}")
    g = check_golden(router)
    status = "ok" if g["passed"] else "PROBLEM"
    problems += not g["passed"]
    click.echo(f"golden parity: max |d mu_tilde| {g['max_abs_diff']:.2e} (tolerance {g['tolerance']:g}) {status}")
    if problems:
        raise click.ClickException(f"{problems} problem(s) found")
    click.echo("all checks passed")


@main.command("calibrate")
@click.option("-b", "--bundle", required=True, type=FOLDER)
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=FOLDER,
    help="Your labelled queries in the native format (outcomes of the bundle's models).",
)
@click.option("--max-avg-cost", type=USD, help="Target: mean cost per query (USD) at most X.")
@click.option("--max-share", help="Target: MODEL:P, at most a share P of queries sent to MODEL.")
@click.option(
    "--split",
    type=click.Choice(["all", "val", "test", "train"]),
    default="all",
    show_default=True,
    help="Which rows of DATA to calibrate on (a `split` field is needed for val/test/train).",
)
def calibrate_cmd(bundle, data_dir, max_avg_cost, max_share, split):
    """Pick lambda on your labelled data for one budget target and record it in the bundle's manifest.

    The feasible lambda with the highest mean score wins; the manifest is rewritten
    atomically and `route` uses the new default from then on.
    """
    import numpy as np

    from ..export.data.format import load_dataset
    from ..runtime.manage import calibrate, calibration_target, tradeoff

    share = None
    if max_share:
        model, _, p = max_share.rpartition(":")
        try:
            share = (model, float(p))
        except ValueError:
            raise click.BadParameter("expected MODEL:P with P in [0, 1]", param_hint="--max-share") from None
        if not model or not 0 <= share[1] <= 1:
            raise click.BadParameter("expected MODEL:P with P in [0, 1]", param_hint="--max-share")
    router = load_router(bundle, "auto")
    calibration_target(router, max_avg_cost, share)  # a bad target is a usage error before anything is encoded
    data = load_dataset(data_dir)
    rows = [i for i in range(data.n) if split == "all" or data.split[i] == split]
    if not rows:
        raise click.ClickException(f"{data_dir}: no rows in split '{split}'")
    if not set(router.names) & set(data.model_names):
        raise click.ClickException(f"{data_dir}: none of the bundle's models has outcomes in this data")
    data = data.for_pool(router.names)  # outcome columns in the bundle's pool order
    qs = [(data.images[i], data.question[i]) for i in rows]
    feats, meta = [], []
    with click.progressbar(range(0, len(qs), 64), label="encoding", file=sys.stderr) as bar:
        for s in bar:
            feats.append(router.features(qs[s : s + 64], meta=meta))
    res = calibrate(
        router,
        np.concatenate(feats),
        data.Y[rows],
        data.C[rows],
        data.A[rows],
        meta=meta,
        max_avg_cost=max_avg_cost,
        max_share=share,
    )
    click.echo(
        f"{'lambda':>18s} {'mean score':>10s} {'mean cost $':>12s}"
        + (f" {'share':>6s}" if share else "")
        + "  meets the target"
    )
    for p in tradeoff(res["points"]):
        chosen = res["lambda"] is not None and p["lambda"] <= res["lambda"] <= p["lambda_to"]
        span = f"{p['lambda']:.4g}" + (f"..{p['lambda_to']:.4g}" if p["lambda_to"] != p["lambda"] else "")
        click.echo(
            f"{'*' if chosen else ' '}{span:>17s} {p['score']:>10.4f} {p['cost']:>12.4g}"
            + (f" {p['share']:>6.3f}" if share else "")
            + f"  {'yes' if p['feasible'] else 'no'}"
        )
    if not res["met"]:
        raise click.ClickException(
            f"no lambda meets the target on these {res['queries']} queries (see the table); "
            f"{bundle}/manifest.json was left as it was"
        )
    click.echo(
        f"lambda {res['lambda']:g}: mean score {res['score']:.4f}, mean cost {res['cost']:.4g} on "
        f"{res['queries']} queries; recorded in {bundle}/manifest.json"
    )
