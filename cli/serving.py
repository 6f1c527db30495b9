"""Serving commands: route, route-batch, serve, and the production loop (feedback, refresh)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .base import (
    echo_json,
    main,
    route_options,
    load_router,
    start_log,
    close_log,
    note_dropped,
    is_file,
    printable,
    LAMBDA,
    USD,
    Number,
    IMAGE_SUFFIXES,
    BUNDLE_OPTION,
    LOG_OPTION,
    LOG_CONTENT_OPTION,
    EXPLORE_OPTION,
    PROVIDER_OPTION,
    ANY_PATH,
    FILE_PATH,
    FOLDER_PATH,
)


@main.command("route")
@click.argument("args", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option("--models", help="Comma-separated allow-list of candidate models.")
@click.option("--exclude", help="Comma-separated models that may not be chosen.")
@click.option(
    "--lambda",
    "lam",
    type=LAMBDA,
    metavar="NUMBER|PRESET",
    help="Cost weight: utility = predicted quality - lambda x normalised expected cost; a number or "
    "a preset of the bundle (quality, balanced, budget_50, budget_25, budget_10; `lr-onnx info` "
    "lists them). Default: the bundle's calibrated value.",
)
@click.option("--max-cost", type=USD, help="Per-query budget in USD (expected cost).")
@click.option(
    "--explain",
    is_flag=True,
    help="Show the closest capability slices (clusters of the training queries, "
    "with each top model's score there), what the capability memory's "
    "nearest labelled queries say, and the margins at the top.",
)
@LOG_OPTION
@LOG_CONTENT_OPTION
@EXPLORE_OPTION
@BUNDLE_OPTION
@PROVIDER_OPTION
def route_cmd(args, as_json, models, exclude, lam, max_cost, explain, log_dir, log_content, explore, bundle, provider):
    """Route a query: [IMAGE ...] QUESTION (no image = text-only query).

    Prints every candidate sorted by utility with predicted quality mu +/- sigma,
    expected cost for THIS query (the model's image-token rule and prices, where the
    bundle has them) and utility; the chosen model is marked with '*'. A query unlike
    the bundle's training queries gets a one-line out-of-coverage note; images given to a
    bundle that reads the question only get a note that they set costs, not quality.
    """
    *images, question = args
    if not question.strip():
        raise click.UsageError("the question is empty (usage: lr-onnx route [IMAGE ...] QUESTION)")
    if is_file(question) or (not images and Path(question).suffix.lower() in IMAGE_SUFFIXES):
        raise click.UsageError(
            f"the last argument must be the question; {printable(question)!r} looks like an image "
            f"file (usage: lr-onnx route [IMAGE ...] QUESTION)"
        )
    router = load_router(bundle, provider)
    opts = route_options(router, models, exclude, lam, max_cost, explore, explain)
    log = start_log(router, log_dir, log_content)
    d = router.route(images, question, options=opts)
    close_log(log)
    if as_json:
        echo_json(d.to_dict())
        return
    click.echo(f"{'':1s} {'model':28s} {'mu_tilde +/- sigma':>22s} {'exp. cost $':>12s} {'utility':>9s}")
    for c in d.candidates:
        mark = "*" if c.name == d.model else " "
        click.echo(
            f"{mark} {c.name[:28]:28s} {c.mu_tilde:>10.3f} +/- {c.sigma:<7.3f} {c.expected_cost:>12.3g} "
            f"{c.utility:>9.4f}"
        )
    click.echo(
        f"chosen: {d.model} (lambda {d.lam:g}"
        + (f"; excluded {', '.join(d.excluded)}" if d.excluded else "")
        + (f"; explored, propensity {d.propensity:.3f}" if d.propensity < 1 else "")
        + ")"
    )
    if d.id:
        click.echo(f"decision id: {d.id} (logged to {log_dir}; lr-onnx feedback attaches its outcome)")
    if images and not router.bundle.manifest.reads_images:
        click.echo(
            "note: this bundle reads the question only (its router was trained on text alone): the image sets each model's "
            "expected cost (its image tokens), not the predicted quality"
        )
    if d.coverage and d.coverage["out_of_coverage"]:
        c = d.coverage
        if c["similarity"] < c["threshold"]:
            why = f"similarity {c['similarity']:.3f} < {c['threshold']:.3f} to the training slices"
        else:
            why = f"closeness {c['memory_closeness']:.2f} to the capability memory's nearest labelled queries"
        fallback = (
            "each model's score falls back towards its average"
            if "memory_closeness" in c
            else "treat the scores as guesses"
        )
        click.echo(f"note: out of coverage: this query is unlike the router's training queries ({why}); {fallback}")
    if explain and d.explain:
        for s in d.explain["closest_slices"]:
            click.echo(
                f"slice {s['slice']} (similarity {s['similarity']:.3f}): "
                + ", ".join(f"{k} {v:.2f}" for k, v in s["scores"].items())
            )
        mem = d.explain.get("memory")
        if mem:
            click.echo(
                f"memory: closeness {mem['closeness']:.2f} to its {mem['neighbours']} nearest labelled queries"
                + (f" (read as {mem['source']}, the source most of them come from)" if mem.get("source") else "")
                + "; "
                + ", ".join(f"{k} {v['estimate']:.2f} ({v['evidence']:g} of them)" for k, v in mem["estimates"].items())
            )
        for m in d.explain["pairwise_margins"]:
            click.echo(
                f"margin {m['between'][0]} over {m['between'][1]}: utility {m['utility_margin']:+.4f}, z {m['z']:+.2f}"
            )
        entry = router.bundle.manifest.memory
        blend = None if entry is None else entry.blend
        if blend == 0:
            click.echo(
                "note: this bundle answers with its capability memory alone (validation chose no network "
                "correction), so a model's score does not depend on which others are available"
            )
        else:
            click.echo(
                "note: each model's score is read in the context of the models available (latent "
                "communication): --models or --exclude can change the other candidates' scores too"
            )


@main.command("route-batch")
@click.argument("inp", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=str))
@click.option(
    "--out",
    required=True,
    type=FILE_PATH,
    help="JSONL of decisions; appended to, so a rerun resumes where it stopped.",
)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--models", help="Comma-separated allow-list of candidate models.")
@click.option("--exclude", help="Comma-separated models that may not be chosen.")
@click.option("--lambda", "lam", type=LAMBDA, help="Cost weight: a number or a preset name (default: the bundle's).")
@click.option("--max-cost", type=USD, help="Per-query budget in USD (expected cost).")
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: Ray Data over an actor pool, one Router per actor (pip install '.[cpu,ray]'); reads "
    "JSONL, CSV or Parquet, writes JSONL (resumable) or Parquet (OUT ending in .parquet).",
)
@click.option("--address", help="Ray cluster address (with --engine ray; default: a local Ray).")
@LOG_OPTION
@LOG_CONTENT_OPTION
@EXPLORE_OPTION
@BUNDLE_OPTION
@PROVIDER_OPTION
def route_batch_cmd(
    inp,
    out,
    batch_size,
    models,
    exclude,
    lam,
    max_cost,
    engine,
    address,
    log_dir,
    log_content,
    explore,
    bundle,
    provider,
):
    """Route every query of INP (.jsonl: {"id", "question", "images"}; .csv: id,question,images with ';').

    INP may be '-' (JSONL on standard input) or a FIFO (waited on for 30 s). Each
    batch's decisions are appended to OUT as whole lines as soon as it is routed; ids
    already in OUT are skipped, so an interrupted run resumes where it stopped, and a
    torn last line (a crash, a full disk) is cut off first. OUT is locked while a run
    writes it. Bad records (malformed JSON or CSV, invalid UTF-8, wrong types, an
    unreadable image, a misspelt field such as "image") and duplicate ids are reported
    with their line numbers and skipped; the rest is processed, and the exit status is
    then 1. Fields of your own are ignored.

    --engine ray runs the same routing on Ray Data (local, or a cluster with --address):
    every record needs an id there, image paths must be readable by the actors (shared
    file system or s3:// / gs:// URIs), and decisions are identical to the local engine.
    """
    from ..runtime.batch import count_records, route_batch

    if address and engine != "ray":
        raise click.UsageError("--address is for --engine ray")
    router = load_router(bundle, provider)
    opts = route_options(router, models, exclude, lam, max_cost, explore)
    log = None if engine == "ray" else start_log(router, log_dir, log_content)
    total = count_records(Path(inp)) if inp != "-" and Path(inp).is_file() else None
    said = set()

    def problem(msg: str) -> None:  # as it happens (a killed run has already said what it skipped)
        said.add(msg)
        click.echo(("\n" if total is not None else "") + f"skipped {printable(msg)}", err=True)

    if engine == "ray":
        from ..runtime.ray_engine import route_batch_ray

        if inp == "-":
            raise click.UsageError("--engine ray reads files (JSONL, CSV, Parquet), not standard input")
        if log_dir is None and log_content:
            raise click.UsageError("--log-content needs --log DIR")
        from ..runtime.decisionlog import log_folder

        res = route_batch_ray(
            router,
            inp,
            out,
            bundle=bundle,
            address=address,
            batch_size=batch_size,
            opts=opts,
            log=None if log_dir is None else (str(log_folder(log_dir).resolve()), log_content),
        )
    elif total is None:
        res = route_batch(router, inp, out, opts=opts, batch_size=batch_size, on_problem=problem)
    else:
        with click.progressbar(length=total, label="routing", file=sys.stderr) as bar:
            res = route_batch(
                router, inp, out, opts=opts, batch_size=batch_size, on_progress=bar.update, on_problem=problem
            )
    close_log(log)
    for p in res["problems"]:
        if p not in said:
            click.echo(f"skipped {printable(p)}", err=True)
    click.echo(
        f"routed {res['routed']}, already done {res['skipped_done']}, failed {res['failed']}, "
        f"duplicate ids {res['duplicates']}, out of coverage {res['out_of_coverage']}; wrote {out}"
    )
    if res.get("chosen"):
        cost = res.get("expected_cost_usd", 0.0)
        click.echo(
            "chosen: "
            + ", ".join(f"{n} {c}" for n, c in sorted(res["chosen"].items(), key=lambda kv: -kv[1]))
            + f"; expected cost {cost:.4g} USD in all, {cost / max(res['routed'], 1):.3g} per query"
        )
    if res["failed"] or res["duplicates"]:
        sys.exit(1)


@main.command("feedback")
@click.argument("log_dir", metavar="LOG", type=FOLDER_PATH)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=False, path_type=str))
@click.option(
    "--window-h",
    type=Number(24 * 3650, lo=0.001),
    default=24 * 7,
    show_default=True,
    help="Accept feedback for decisions at most this many hours old.",
)
def feedback_cmd(log_dir, file, window_h):
    """Attach observed outcomes from FILE to the decisions logged in LOG (route --log, serve's [logging]).

    FILE is JSONL, one {"id": DECISION_ID, "score": 0..1, "cost": USD, "model": NAME} per line
    (cost and model optional; model defaults to the chosen one). Every line is checked
    first: a malformed line, an unknown or too old id, or a different score for an
    (id, model) that already has one is an error, and then nothing is recorded. The same
    outcome twice is recorded once. `lr-onnx refresh` learns from what is recorded.
    """
    from ..runtime.feedback import FeedbackStore, read_feedback_file

    if not Path(log_dir).is_dir():
        raise click.UsageError(f"{printable(log_dir)}: no such log folder")
    items = read_feedback_file(file)
    status = FeedbackStore(log_dir, window_h=window_h).add(items)
    click.echo(
        f"recorded {status.count('recorded')} outcome(s), {status.count('duplicate')} already recorded; "
        f"wrote to {log_dir}"
    )


@main.command("refresh")
@click.option(
    "-b",
    "--bundle",
    "bundle",
    required=True,
    type=FOLDER_PATH,
    help="The bundle that routed the logged decisions (never modified).",
)
@click.option(
    "--log",
    "log_dir",
    required=True,
    type=FOLDER_PATH,
    help="The decision log folder, with feedback attached.",
)
@click.option("--out", required=True, type=ANY_PATH, help="The refreshed bundle folder to write.")
@click.option(
    "--report",
    type=FILE_PATH,
    help="Report JSON to write (default: OUT.report.json; a PNG beside it).",
)
@click.option(
    "--retrain-share",
    type=Number(1.0),
    default=0.25,
    show_default=True,
    help="Verdict: retrain when more of the traffic than this is out of coverage.",
)
def refresh_cmd(bundle, log_dir, out, report, retrain_share):
    """Write OUT: BUNDLE updated from the feedback in LOG, without retraining (numpy, no torch).

    Labelled decisions join the capability memory; its neighbours, pseudo-count and
    closeness scale change to those that estimate the feedback best (leave-one-out
    Brier), if they beat the current ones by a margin that allows for the readings
    tried (2.4-2.9 standard errors). Each model's profile moves towards its observed
    scores (off-policy records weighted by inverse propensity); an added model's local
    prior is fitted again on its labels and its feedback.
    Only feedback newer than BUNDLE's last refresh is used. The report gives each
    model's predicted vs observed score, the out-of-coverage share, the chosen-model
    mix and a verdict: refresh is enough, or retrain.
    """
    from ..runtime.refresh import refresh

    rep = refresh(bundle, log_dir, out, retrain_ooc_share=retrain_share, report=report)
    click.echo(
        f"refreshed from {rep['records_used']} labelled decision(s) ({rep['memory_rows_added']} memory rows); "
        f"wrote {out}"
    )
    for name, v in rep["models"].items():
        pred = "n/a" if v["predicted"] is None else f"{v['predicted']:.3f}"
        click.echo(f"  {name[:28]:28s} {v['labels']:>6d} labels, predicted {pred}, observed {v['observed']:.3f}")
    rd = rep.get("memory_reading")
    if rd:
        b, a = rd["best"], rd["after"]
        click.echo(
            f"memory read from {a['k']} neighbours (pseudo-count {a['kappa']:g}, tau {a['tau']:g}): "
            + ("chosen on the feedback" if rd["changed"] else "kept")
            + f"; the best on the feedback ({b['k']}, {b['kappa']:g}, {b['tau']:g}) gains "
            f"{rd['brier_before'] - rd['brier_best']:.4f} Brier, {rd['gain_standard_errors']:g} standard errors "
            f"(needs {rd['needed_standard_errors']:g})"
        )
    for name, lp in rep.get("local_priors", {}).items():
        a = lp["after"]
        click.echo(
            f"added model {name}: local prior fitted again, {a['intercept']:+.3f} {a['slope']:+.3f} x difficulty"
        )
    click.echo(f"out of coverage: {rep['out_of_coverage_share']:.1%} of {rep['decisions']} decisions")
    click.echo(f"verdict: {rep['verdict']}")
    click.echo(f"report: {report or str(out) + '.report.json'}")
    note_dropped(rep["dropped"])


@main.command("serve")
@BUNDLE_OPTION
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything beyond loopback warns unless a gateway key is set.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--config",
    "config_path",
    type=FILE_PATH,
    help="TOML file: upstreams per pool model ([models.NAME] base_url, api_key_env, upstream_model), "
    "limits, batching, retries (README, 'Serving'). Without it: /v1/route only, every default.",
)
@click.option(
    "--api-key-env",
    metavar="NAME",
    help="Environment variable holding the gateway key clients must send (Authorization: Bearer ...).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse to start when a [models.NAME] table's api_key_env names an unset or empty variable "
    "(default: one warning per model).",
)
@PROVIDER_OPTION
def serve_cmd(bundle, host, port, config_path, api_key_env, strict, provider):
    """Serve the router over HTTP: an OpenAI-compatible gateway (pip install ".[cpu,serve]").

    POST /v1/route answers what `route --json` prints; POST /v1/chat/completions with model
    lr-onnx/auto (or lr-onnx/<preset>) routes the last user message and forwards the request
    to the chosen model's upstream, falling back down the ranking when it fails; GET
    /v1/models, /healthz, /readyz, /metrics (Prometheus). SIGTERM or Ctrl-C stops accepting,
    answers what is in flight and exits 0.
    """
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn", "httpx", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(
            f"serving needs the serve extra ({', '.join(missing)} not installed): pip install '.[cpu,serve]'"
        )
    from ..serve.server import serve

    serve(
        bundle=bundle,
        host=host,
        port=port,
        config_path=config_path,
        api_key_env=api_key_env,
        provider=provider,
        strict=strict,
    )
