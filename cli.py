"""The `lr-onnx` command line: parse, call the library, print.

Commands import their implementation inside the function body, so `lr-onnx --help`
stays fast and the serving commands never load the training side. Library errors
(`LrOnnxError`) become one `Error: ...` line and exit 1; bad arguments, and options
that name something the bundle does not have (`OptionError`), exit 2.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from .version import __version__


class _Group(click.Group):
    """A click group that turns lr-onnx errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx):
        import warnings

        from .runtime.errors import LrOnnxError, LrOnnxWarning, OptionError

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("ignore", UserWarning)  # other libraries' noise (exporter, quantiser)
                warnings.simplefilter("always", LrOnnxWarning)  # added last, so it takes precedence
                try:
                    return super().invoke(ctx)
                finally:
                    for w in caught:  # ours as one plain line each
                        if issubclass(w.category, LrOnnxWarning):
                            click.echo(f"warning: {w.message}", err=True)
        except OptionError as e:
            raise _OneLine(str(e), exit_code=2) from None
        except LrOnnxError as e:
            raise _OneLine(str(e)) from None
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in _EXPORT_MODULES:
                raise click.ClickException(
                    f"this command needs the training extra ({e.name} is not installed): "
                    f"pip install -e '.[export]'") from None
            raise


class _OneLine(click.ClickException):
    """`Error: ...` on one line, whatever the message holds (lone surrogates from argv, newlines)."""

    def __init__(self, message: str, exit_code: int = 1):
        clean = " ".join(message.encode("utf-8", "backslashreplace").decode("utf-8").split())
        super().__init__(clean)
        self.exit_code = exit_code


_EXPORT_MODULES = {"torch", "onnx", "onnxscript", "sklearn", "skimage", "matplotlib", "safetensors", "tqdm",
                   "pyarrow", "openpyxl", "optimum", "transformers"}


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, allow_nan=False))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lr-onnx")
def main():
    """lr-onnx: pick the multimodal LLM with the best expected utility for an image+question query.

    Training side (pip install -e '.[export]'): data, train, evaluate, export.
    Serving side (pip install '.[cpu]' or '.[gpu]'): route, route-batch, info, doctor; no PyTorch.
    HTTP gateway (pip install '.[cpu,serve]'): serve. Ray batch routing ('.[cpu,ray]'): route-batch --engine ray.
    """


# ----------------------------------------------------------------------------- serving side
def _names(value: str | None, option: str = "--models") -> list[str] | None:
    if value is None:
        return None
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out:
        raise click.UsageError(f"{option} {value!r} names no model; leave the option out to allow every model")
    return out


def _load_router(bundle, provider):
    from .runtime.router import Router

    return Router.load(bundle, provider=provider)


def _start_log(router, log_dir, content):
    if log_dir is None:
        if content:
            raise click.UsageError("--log-content needs --log DIR")
        return None
    return router.start_log(log_dir, content=content)


def _close_log(log) -> None:
    if log is not None:
        log.close()
        if log.dropped:
            click.echo(f"warning: {log.dropped} decision(s) could not be logged to {log.folder} (disk full or "
                       f"unwritable); routing was not affected", err=True)


class _Number(click.ParamType):
    """A finite float in [0, hi] (click's FloatRange lets nan, inf and 400-digit numbers through), or a preset
    name when `presets` is set. The bounds are the library's own, so CLI and API refuse the same values."""

    name = "number"

    def __init__(self, hi: float, presets: bool = False):
        self.hi, self.presets = hi, presets

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            v = float(value)
        except (TypeError, ValueError):
            if self.presets and isinstance(value, str) and value.replace("_", "").isalnum() and value.isascii():
                return value  # checked against the bundle's presets when it is loaded
            self.fail(f"{_safe(value)!r} is not a number", param, ctx)
        if not math.isfinite(v) or not 0 <= v <= self.hi:
            self.fail(f"{_safe(value)[:40]!r} must be a finite number between 0 and {self.hi:g}", param, ctx)
        return v


def _is_file(s: str) -> bool:
    try:
        return len(s) < 4096 and Path(s).is_file()
    except (OSError, ValueError):
        return False


def _safe(value) -> str:
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


_LAMBDA = _Number(1e9, presets=True)
_USD = _Number(1e6)
_PRICE = _Number(1e6)


def _bundle_path(ctx, param, value):
    if value is not None and not value.strip():
        raise click.BadParameter("is empty; leave the option out for the default bundle")
    return value


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
_BUNDLE = click.option("--bundle", type=click.Path(path_type=str), default=None, callback=_bundle_path,
                       help="Bundle folder (default: the bundle shipped in assets/).")
_LOG = click.option("--log", "log_dir", type=click.Path(file_okay=False, path_type=str), default=None,
                    help="Append each decision (id, pool, choice, every candidate's mu, sigma and cost, the query's "
                         "compact embedding) to the decision log in this folder, for `lr-onnx feedback` and "
                         "`lr-onnx refresh`. No question or image is stored unless --log-content.")
_LOG_CONTENT = click.option("--log-content", is_flag=True,
                            help="With --log: also store each question and its images' sizes (user content).")
_EXPLORE = click.option("--explore", default=None, metavar="POLICY",
                        help="Opt-in exploration, so feedback can teach the router about models it rarely picks: "
                             "off, thompson[:S] (choose by a draw from mu_tilde +/- S sigma) or epsilon:P (a random "
                             "candidate with probability P). The decision records its propensity.")
_PROVIDER = click.option("--provider", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto",
                         show_default=True, help="Execution provider; auto = TensorRT > CUDA > CPU, as available.")


@main.command("route")
@click.argument("args", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option("--models", help="Comma-separated allow-list of candidate models.")
@click.option("--exclude", help="Comma-separated models that may not be chosen.")
@click.option("--lambda", "lam", type=_LAMBDA, default=None, metavar="NUMBER|PRESET",
              help="Cost weight: utility = predicted quality - lambda x normalised expected cost; a number or "
                   "a preset of the bundle (quality, balanced, budget_50, budget_25, budget_10; `lr-onnx info` "
                   "lists them). Default: the bundle's calibrated value.")
@click.option("--max-cost", type=_USD, default=None, help="Per-query budget in USD (expected cost).")
@click.option("--explain", is_flag=True, help="Show the closest capability slices (clusters of the training queries, "
                                                "with each top model's score there), what the capability memory's "
                                                "nearest labelled queries say, and the margins at the top.")
@_LOG
@_LOG_CONTENT
@_EXPLORE
@_BUNDLE
@_PROVIDER
def route_cmd(args, as_json, models, exclude, lam, max_cost, explain, log_dir, log_content, explore, bundle, provider):
    """Route a query: [IMAGE ...] QUESTION (no image = text-only query).

    Prints every candidate sorted by utility with predicted quality mu +/- sigma,
    expected cost for THIS query (the model's image-token rule and prices, where the
    bundle has them) and utility; the chosen model is marked with '*'. A query unlike
    the bundle's training queries gets a one-line out-of-coverage note.
    """
    *images, question = args
    if not question.strip():
        raise click.UsageError("the question is empty (usage: lr-onnx route [IMAGE ...] QUESTION)")
    if _is_file(question) or (not images and Path(question).suffix.lower() in _IMAGE_SUFFIXES):
        raise click.UsageError(f"the last argument must be the question; {_safe(question)!r} looks like an image "
                               f"file (usage: lr-onnx route [IMAGE ...] QUESTION)")
    router = _load_router(bundle, provider)
    opts = router.options(models=_names(models), exclude=_names(exclude, "--exclude"), lam=lam, max_cost=max_cost,
                          explain=explain, explore=explore)
    log = _start_log(router, log_dir, log_content)
    d = router.route(images, question, options=opts)
    _close_log(log)
    if as_json:
        _echo_json(d.to_dict())
        return
    click.echo(f"{'':1s} {'model':28s} {'mu_tilde +/- sigma':>22s} {'exp. cost $':>12s} {'utility':>9s}")
    for c in d.candidates:
        mark = "*" if c.name == d.model else " "
        click.echo(f"{mark} {c.name[:28]:28s} {c.mu_tilde:>10.3f} +/- {c.sigma:<7.3f} {c.expected_cost:>12.3g} "
                   f"{c.utility:>9.4f}")
    click.echo(f"chosen: {d.model} (lambda {d.lam:g}" + (f"; excluded {', '.join(d.excluded)}" if d.excluded else "")
               + (f"; explored, propensity {d.propensity:.3f}" if d.propensity < 1 else "") + ")")
    if d.id:
        click.echo(f"decision id: {d.id} (logged to {log_dir}; lr-onnx feedback attaches its outcome)")
    if d.coverage and d.coverage["out_of_coverage"]:
        c = d.coverage
        if c["similarity"] < c["threshold"]:
            why = f"similarity {c['similarity']:.3f} < {c['threshold']:.3f} to the training slices"
        else:
            why = f"closeness {c['memory_closeness']:.2f} to the capability memory's nearest labelled queries"
        fallback = ("each model's score falls back towards its average" if "memory_closeness" in c
                    else "treat the scores as guesses")
        click.echo(f"note: out of coverage: this query is unlike the router's training queries ({why}); {fallback}")
    if explain and d.explain:
        for s in d.explain["closest_slices"]:
            click.echo(f"slice {s['slice']} (similarity {s['similarity']:.3f}): " +
                       ", ".join(f"{k} {v:.2f}" for k, v in s["scores"].items()))
        mem = d.explain.get("memory")
        if mem:
            click.echo(f"memory: closeness {mem['closeness']:.2f} to its {mem['neighbours']} nearest labelled queries; "
                       + ", ".join(f"{k} {v['estimate']:.2f} ({v['evidence']:g} of them)"
                                   for k, v in mem["estimates"].items()))
        for m in d.explain["pairwise_margins"]:
            click.echo(f"margin {m['between'][0]} over {m['between'][1]}: utility {m['utility_margin']:+.4f}, "
                       f"z {m['z']:+.2f}")
        blend = (router.bundle.manifest.get("memory") or {}).get("blend")
        if blend == 0:
            click.echo("note: this bundle answers with its capability memory alone (validation chose no network "
                       "correction), so a model's score does not depend on which others are available")
        else:
            click.echo("note: each model's score is read in the context of the models available (latent "
                       "communication): --models or --exclude can change the other candidates' scores too")


# ----------------------------------------------------------------------------- data
@main.group(cls=_Group)
def data():
    """Routing datasets in the native format: check, convert, merge, generate the demo benchmark."""


@data.command("check")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--strict-images", is_flag=True, help="Treat a missing image file as an error (default: counted).")
def data_check(directory, as_json, strict_images):
    """Validate DIRECTORY (queries.jsonl + models.json) and report what it holds.

    Prints queries, models, datasets, images, the split, per-model mean score and
    cost per split, best single model, oracle, random router and the coverage
    matrix. For datasets with difficulty metadata (the demo benchmark) it also
    measures the properties of a fair multimodal routing test.
    """
    from .export.check import format_report, summarize
    from .export.data import load_dataset

    report = summarize(load_dataset(directory, strict_images=strict_images))
    if as_json:
        _echo_json(report)
    else:
        click.echo(format_report(report))


@data.group("convert", cls=_Group)
def data_convert():
    """Convert a published routing benchmark into the native format."""


@data_convert.command("mmr")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--mmr-official-split", is_flag=True,
              help="Reproduce MMR-Bench's split (train_size=0.2, random_state=42, CSV order) "
                   "instead of the generated 70/10/20 split.")
def convert_mmr(src, out, mmr_official_split):
    """MMR-Bench: SRC holds MMR_Bench.csv and the image folders (or images.tar.gz). OUT must not exist."""
    from .export.convert import convert_mmr as run

    summary = run(src, out, official_split=mmr_official_split)
    click.echo(f"wrote {summary['rows']} queries x {summary['models']} models to {out} "
               f"({summary['missing_images']} rows without an image file)")


@data_convert.command("vl-routerbench")
@click.argument("src", type=click.Path(exists=True, path_type=str))
@click.argument("out", type=click.Path(path_type=str))
def convert_vl(src, out):
    """VL-RouterBench: SRC is the matrices layout, an extracted vlm_router_data/, or vlm_router_data.tar.gz.

    Archives are extracted member by member (absolute paths, '..', links and device
    files are refused); pickled registries are read only if they hold plain lists or
    dicts, and VLMEvalKit .pkl result files are skipped with a warning. OUT must not exist.
    """
    from .export.convert import convert_vl_routerbench as run

    summary = run(src, out)
    click.echo(f"wrote {summary['rows']} queries x {summary['models']} models to {out} "
               f"(layout {summary['layout']}, cost_mode {summary['cost_mode']})")
    for w in summary.get("warnings", []):
        click.echo(f"warning: {w}", err=True)


@data.command("demo")
@click.argument("out", type=click.Path(path_type=str))
@click.option("--n", "n", type=click.IntRange(min=50), default=12000, show_default=True,
              help="Number of queries.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for images, questions and outcomes.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Rendering processes (default: CPU count).")
@click.option("--skills", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="The published-accuracy table (default: ../shared/data/mllm-skills/skills.json beside the "
                   "checkout, or $LR_ONNX_SKILLS).")
def data_demo(out, n, seed, workers, skills):
    """Write the multimodal demo routing benchmark to OUT (which must not exist).

    Real rendered and photographed images (documents and receipts, charts,
    tables, geometry diagrams, photos, spatial layouts) plus text-only queries,
    each with a correct answer. Model OUTCOMES ARE SIMULATED from a documented
    latent skill model calibrated to published per-family accuracies of real
    MLLMs, priced with their published per-token prices (see OUT/README.md).
    """
    from .export.demo import build_demo

    summary = build_demo(out, n=n, seed=seed, workers=workers, skills=skills)
    click.echo(f"wrote {summary['queries']} queries ({summary['images']} images, "
               f"{summary['mean_image_kb']:.1f} KB mean) x {summary['models']} models to {out} "
               f"in {summary['seconds']:.1f} s")


# ----------------------------------------------------------------------------- training side
@data.command("merge")
@click.argument("out", type=click.Path(path_type=str))
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=str))
def data_merge(out, sources):
    """Merge native datasets SOURCES... into OUT (which must not exist).

    The pool is the union of the sources' models by name; a model a source never ran is
    unavailable on that source's queries (a ragged pool, which training, evaluation and every
    baseline handle). Labels get their source's folder name as prefix (kept if already there),
    colliding ids get `<source>:`, images are linked or copied into OUT/images/<source>/, and
    each source's own split is kept. A model must have the same prices in every source.
    """
    from .export.merge import merge_datasets

    s = merge_datasets(out, list(sources))
    click.echo(f"wrote {s['queries']} queries x {s['models']} models to {out}")
    for name, v in s["per_source"].items():
        click.echo(f"  {name}: {v['queries']} queries, {len(v['models'])} models, split {v['split']}"
                   + (f", {v['ids_prefixed']} ids prefixed" if v["ids_prefixed"] else ""))


@main.command("train")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--out", "out", required=True, type=click.Path(path_type=str), help="Run folder to write.")
@click.option("--setting", type=click.Choice(["performance", "cost"]), default="performance", show_default=True,
              help="performance: utility = score; cost: utility = score - 0.03 x normalised cost.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True,
              help="At most this many epochs; early stopping (patience 5) on the validation utility.")
@click.option("--seed", type=int, default=20260308, show_default=True)
@click.option("--no-few-shot", is_flag=True, help="Ablation: no few-shot profile simulation (method.md 3.4).")
@click.option("--no-pool-dropout", is_flag=True, help="Ablation: no random sub-pools in training (method.md 3.4).")
@click.option("--layers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Latent communication layers (0 = the no-communication ablation).")
@click.option("--text-only", is_flag=True, help="Ablation: ignore the image part of the query features.")
@click.option("--no-memory", is_flag=True,
              help="Ablation: no capability memory (the k nearest labelled queries' outcomes per model).")
def train_cmd(data_dir, out, setting, epochs, seed, no_few_shot, no_pool_dropout, layers, text_only, no_memory):
    """Train LatentRouter on DATA_DIR's train split with early stopping on validation.

    Writes OUT/weights.safetensors, config.json, profiles.json, preprocessing.json and
    curves.json. Query features are computed once by the frozen encoders and cached
    (see LR_ONNX_CACHE). Same seed, same result.

    The router reads a capability memory of the training queries: for each model, its
    outcomes on the query's nearest labelled neighbours. Its settings (neighbours,
    shrinkage, image weight, size) and how far the network may correct it are chosen on
    validation and written to OUT/config.json and OUT/memory_selection.json.
    """
    from .export.train import TrainConfig, train

    cfg = TrainConfig(setting=setting, epochs=epochs, seed=seed, layers=layers, text_only=text_only,
                      memory=not no_memory)
    if no_few_shot:
        cfg.few_shot = 0.0
    if no_pool_dropout:
        cfg.pool_dropout = 0.0
    summary = train(data_dir, out, cfg)
    click.echo(f"trained in {summary['seconds']:.1f} s ({summary['epochs_run']} epochs): "
               f"best validation utility {summary['best_val_utility']:.4f}; wrote {out}")


@main.command("evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=str), default=None,
              help="Dataset folder (default: the one the run was trained on). Another dataset: transfer "
                   "evaluation, the run as trained, on the models both pools share (RUN/transfer_NAME.json).")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--no-ablations", is_flag=True,
              help="Skip training the ablations (no_communication, text_only, no_memory, no_slice_prior).")
def evaluate_cmd(run_dir, data_dir, split, no_ablations):
    """Compare the trained router with the baselines; write metrics.json, frontier.png, report.md.

    Methods: latentrouter, its memory alone (memory_only) and its network alone
    (network_only), the retrained ablations no_memory, no_slice_prior, no_communication
    and text_only, and the baselines knn, mf, mlp, irt, task_lookup, random and
    best_single, all on the same features, split, expected costs and lambda grid.
    Lambda for the rank score is chosen on validation, never on the test split.
    Also written: per-dataset results, pool shift, the routing-collapse diagnostic,
    the uncertainty quality of mu / sigma and the named lambda presets.
    """
    from .export.evaluate import evaluate

    trained_on = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8")).get("data") \
        if (Path(run_dir) / "config.json").is_file() else None
    if data_dir and trained_on and Path(data_dir).resolve() != Path(trained_on).resolve():
        from .export.transfer import transfer_evaluate

        t = transfer_evaluate(run_dir, data_dir, split=split)
        lr, b = t["latentrouter"], t["best_single"]
        click.echo(f"transfer to {data_dir} ({t['rows']} queries, {t['split']}; shared models: "
                   f"{', '.join(t['shared_models'])}): latentrouter {lr['score_at_lambda0']:.4f} at lambda 0, nAUC "
                   f"{lr['nauc']}; best single {b['name']} {b['score']:.4f}; oracle {t['oracle']['score']:.4f}; "
                   f"wrote {run_dir}/transfer_{Path(data_dir).resolve().name}.json")
        return
    out = evaluate(run_dir, data_dir=data_dir, split=split, ablations=not no_ablations)
    m = out["methods"]["latentrouter"]
    b = out["best_single"]
    click.echo(f"latentrouter: score {m['score_at_lambda0']:.4f} at lambda 0 (best single {b['name']} "
               f"{b['score']:.4f}), nAUC {m['nauc']}, QNC {m['qnc']}; wrote {run_dir}/metrics.json, "
               f"frontier.png, report.md")


@main.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--out", "out", required=True, type=click.Path(path_type=str), help="Bundle folder (must not exist).")
@click.option("--precision", type=click.Choice(["fp32", "int8", "int8-full", "fp16"]), default="fp32",
              show_default=True,
              help="int8: MiniLM with 8-bit weights, the image CNN kept fp32 (the default bundle's choice; holds "
                   "98% decision agreement); int8-full: the CNN too (static QDQ; faster on CPU, but changes 2-4% of "
                   "decisions, so its export fails the 98% bar); fp16: for GPUs.")
@click.option("--opset", type=click.IntRange(18, 23), default=18, show_default=True,
              help="ONNX opset (torch 2.13's exporter implements 18 and later).")
@click.option("--fused", is_flag=True, help="Also write fused.onnx: pixels + token ids + pool -> scores in one graph.")
def export_cmd(run_dir, out, precision, opset, fused):
    """Export a trained run to an ONNX bundle and check it (writes OUT/parity.json).

    Graphs: image encoder, text encoder, router (dynamic batch and candidate count),
    plus tokenizer.json and manifest.json (sha256 of every file, preprocessing, pool,
    lambda presets, training metrics). The router always stays fp32.
    """
    from .export.export import export_bundle

    parity = export_bundle(run_dir, out, precision=precision, opset=opset, fused=fused)
    h = parity["held_out"]
    status = "passed" if parity["passed"] else "FAILED"
    click.echo(f"wrote {out}: parity {status} (max |d mu_tilde| {h['max_abs_diff']['mu_tilde']:.2e}, "
               f"decision agreement {h['decision_agreement_lambda0']:.1%} at lambda 0, changed decisions lose "
               f"{h['changed_decision_regret_lambda0']['mean']:.4f} mu_tilde on average)")
    if not parity["passed"]:
        raise click.ClickException(f"the exported bundle misses the parity bars; see {out}/parity.json")


@main.group("models", cls=_Group)
def models():
    """Change a candidate pool without retraining: a bundle (serving side) or a training run."""


def _pool_target(run_dir, bundle, out):
    if bool(run_dir) == bool(bundle):
        raise click.UsageError("give either RUN_DIR (a training run) or --bundle BUNDLE (with --out)")
    if bundle and not out:
        raise click.UsageError("--bundle needs --out: the edited bundle is written as a copy")


@models.command("propose")
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Folder to write (must not exist): queries.jsonl and images/.")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=str), default=None,
              help="Propose from your own queries (--from) for this bundle instead of a training run's rows.")
@click.option("--from", "from_file", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              help="With --bundle: your queries, as route-batch reads them (JSONL or CSV with id, question, images).")
@click.option("--n", "n", type=click.IntRange(min=24), default=48, show_default=True,
              help="Queries to propose (at least 24): ceil(n / slices) from each capability slice, then a seeded draw "
                   "of n of them when that is more.")
@click.option("--seed", type=int, default=20260308, show_default=True, help="Seed of the draw.")
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
        from .export.pool import propose_queries

        rep = propose_queries(run_dir, out, n=n, seed=seed)
        target = run_dir
    else:
        from .runtime.batch import read_query_file
        from .runtime.manage import propose_from_queries

        router = _load_router(bundle, "auto")
        records, problems = read_query_file(from_file)
        for msg in problems:
            click.echo(f"skipped {_safe(msg)}", err=True)
        with click.progressbar(length=len(records), label="encoding", file=sys.stderr) as bar:
            rep = propose_from_queries(router, records, out, n=n, seed=seed, on_progress=bar.update)
        target = f"--bundle {bundle} --out NEW_BUNDLE"
    covered = sum(c > 0 for c in rep["per_slice"])
    short = rep["short_slices"]
    click.echo(f"wrote {out}: {rep['queries']} queries from {covered} of {rep['slices']} slices "
               f"(at most {rep['target_per_slice']} per slice)"
               + (f"; slices {short} have fewer candidate queries" if short else "") +
               f"; fill in outcomes[NAME], then: lr-onnx models add {target} --name NAME --outcomes {out}")


@models.command("add")
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=str), help="Bundle to extend.")
@click.option("--out", type=click.Path(path_type=str), help="Where to write the extended copy of --bundle.")
@click.option("--name", required=True, help="Name of the new model.")
@click.option("--price-in", type=_PRICE, default=None, help="USD per 1M input tokens.")
@click.option("--price-out", type=_PRICE, default=None, help="USD per 1M output tokens.")
@click.option("--outcomes", required=True, type=click.Path(exists=True, path_type=str),
              help="queries.jsonl (or a native folder) with outcomes[NAME] = {score, cost, ...} on labelled queries.")
@click.option("--image-tokens", default=None, metavar="RULE",
              help="The model's image-token rule, for per-query expected costs (with --bundle and --price-in): "
                   "openai-high-detail, claude-pixels-div-750, gemini-258, qwen2-vl-28px, internvl2-448-tiles, "
                   "llava-next-anyres, mllama-560-tiles, fixed-576, or JSON such as '{\"rule\": \"fixed\", "
                   "\"tokens\": 300}'.")
def models_add(run_dir, bundle, out, name, price_in, price_out, outcomes, image_tokens):
    """Add a model from a few labelled queries (48 recommended, 24 minimum); the network is not retrained.

    Its capability profile is built with the frozen slices and standardisation, so it
    routes immediately. With --bundle this needs no torch.
    """
    _pool_target(run_dir, bundle, out)
    if image_tokens and image_tokens.lstrip().startswith("{"):
        try:
            image_tokens = json.loads(image_tokens)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"not valid JSON ({e})", param_hint="--image-tokens") from None
    if run_dir and image_tokens:
        raise click.UsageError("--image-tokens applies to a bundle (--bundle B --out B2); a training run takes the "
                               "rule from its dataset's models.json")
    if run_dir:
        from .export.pool import add_model

        rep = add_model(run_dir, name, outcomes, price_in=price_in, price_out=price_out)
    else:
        from .export.data import load_outcomes_for
        from .runtime.manage import add_model as add_to_bundle

        data = load_outcomes_for(outcomes, name)
        ok = data.A[:, 0]
        router = _load_router(bundle, "auto")
        rep = add_to_bundle(router, out, name, [(data.images[i], data.question[i]) for i in range(data.n) if ok[i]],
                            data.Y[ok, 0], data.C[ok, 0], data.Lat[ok, 0], data.Tok[ok, 0],
                            price_in=price_in, price_out=price_out, image_tokens=image_tokens)
    click.echo(f"added {name}: {rep['queries']} labelled queries, observed score {rep['observed_score']:.3f}, "
               f"predicted {rep['predicted_score']:.3f}, expected cost {rep['expected_cost']:.4g} per query "
               f"({rep['cost_estimator']}" + (f"; observed {rep['observed_cost']:.4g}" if "observed_cost" in rep else "")
               + f"); queries per slice {rep['slice_counts']}")
    if rep.get("pool_scores"):
        click.echo("predicted mu_tilde on these labelled queries, by model (the new one last):")
        for n, v in sorted(rep["pool_scores"].items(), key=lambda kv: (kv[0] == name, -kv[1])):
            click.echo(f"  {n[:32]:32s} {v:.3f}" + ("  (observed %.3f)" % rep["observed_score"] if n == name else ""))
    for w in rep["warnings"]:
        click.echo(f"warning: {w}", err=True)


@models.command("remove")
@click.argument("run_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=str),
              help="A bundle to remove the model from (it is copied to --out, never changed).")
@click.option("--out", type=click.Path(path_type=str), help="Where to write the reduced copy of --bundle.")
@click.option("--name", required=True, help="The pool model to remove (`lr-onnx info` lists the pool).")
def models_remove(run_dir, bundle, out, name):
    """Remove a model from a pool (RUN_DIR in place, or a copy of --bundle at --out)."""
    _pool_target(run_dir, bundle, out)
    if run_dir:
        from .export.pool import remove_model

        remove_model(run_dir, name)
    else:
        from .runtime.manage import remove_model as remove_from_bundle

        remove_from_bundle(bundle, out, name)
    click.echo(f"removed {name}" + (f"; wrote {out}" if out else ""))


@main.command("route-batch")
@click.argument("inp", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=str))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="JSONL of decisions; appended to, so a rerun resumes where it stopped.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--models", help="Comma-separated allow-list of candidate models.")
@click.option("--exclude", help="Comma-separated models that may not be chosen.")
@click.option("--lambda", "lam", type=_LAMBDA, default=None,
              help="Cost weight: a number or a preset name (default: the bundle's).")
@click.option("--max-cost", type=_USD, default=None, help="Per-query budget in USD (expected cost).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: Ray Data over an actor pool, one Router per actor (pip install '.[cpu,ray]'); reads "
                   "JSONL, CSV or Parquet, writes JSONL (resumable) or Parquet (OUT ending in .parquet).")
@click.option("--address", default=None, help="Ray cluster address (with --engine ray; default: a local Ray).")
@_LOG
@_LOG_CONTENT
@_EXPLORE
@_BUNDLE
@_PROVIDER
def route_batch_cmd(inp, out, batch_size, models, exclude, lam, max_cost, engine, address, log_dir, log_content,
                    explore, bundle, provider):
    """Route every query of INP (.jsonl: {"id", "question", "images"}; .csv: id,question,images with ';').

    INP may be '-' (JSONL on standard input) or a FIFO (waited on for 30 s). Each
    batch's decisions are appended to OUT as whole lines as soon as it is routed; ids
    already in OUT are skipped, so an interrupted run resumes where it stopped, and a
    torn last line (a crash, a full disk) is cut off first. OUT is locked while a run
    writes it. Bad records (malformed JSON or CSV, invalid UTF-8, wrong types, an
    unreadable image) and duplicate ids are reported with their line numbers and
    skipped; the rest is processed, and the exit status is then 1.

    --engine ray runs the same routing on Ray Data (local, or a cluster with --address):
    every record needs an id there, image paths must be readable by the actors (shared
    file system or s3:// / gs:// URIs), and decisions are identical to the local engine.
    """
    from .runtime.batch import count_records, route_batch

    if address and engine != "ray":
        raise click.UsageError("--address is for --engine ray")
    router = _load_router(bundle, provider)
    opts = router.options(models=_names(models), exclude=_names(exclude, "--exclude"), lam=lam, max_cost=max_cost,
                          explore=explore)
    log = None if engine == "ray" else _start_log(router, log_dir, log_content)
    total = count_records(Path(inp)) if inp != "-" and Path(inp).is_file() else None
    said = set()

    def problem(msg: str) -> None:  # as it happens (a killed run has already said what it skipped)
        said.add(msg)
        click.echo(("\n" if total is not None else "") + f"skipped {_safe(msg)}", err=True)

    if engine == "ray":
        from .runtime.ray_engine import route_batch_ray

        if inp == "-":
            raise click.UsageError("--engine ray reads files (JSONL, CSV, Parquet), not standard input")
        if log_dir is None and log_content:
            raise click.UsageError("--log-content needs --log DIR")
        from .runtime.decisionlog import log_folder

        res = route_batch_ray(router, inp, out, bundle=bundle, address=address, batch_size=batch_size, opts=opts,
                              log=None if log_dir is None else (str(log_folder(log_dir).resolve()), log_content))
    elif total is None:
        res = route_batch(router, inp, out, opts=opts, batch_size=batch_size, on_problem=problem)
    else:
        with click.progressbar(length=total, label="routing", file=sys.stderr) as bar:
            res = route_batch(router, inp, out, opts=opts, batch_size=batch_size, on_progress=bar.update,
                              on_problem=problem)
    _close_log(log)
    for p in res["problems"]:
        if p not in said:
            click.echo(f"skipped {_safe(p)}", err=True)
    click.echo(f"routed {res['routed']}, already done {res['skipped_done']}, failed {res['failed']}, "
               f"duplicate ids {res['duplicates']}, out of coverage {res['out_of_coverage']}; wrote {out}")
    if res.get("chosen"):
        cost = res.get("expected_cost_usd", 0.0)
        click.echo("chosen: " + ", ".join(f"{n} {c}" for n, c in sorted(res["chosen"].items(), key=lambda kv: -kv[1]))
                   + f"; expected cost {cost:.4g} USD in all, {cost / max(res['routed'], 1):.3g} per query")
    if res["failed"] or res["duplicates"]:
        sys.exit(1)


@main.command("feedback")
@click.argument("log_dir", metavar="LOG", type=click.Path(file_okay=False, path_type=str))
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=False, path_type=str))
@click.option("--window-h", type=click.FloatRange(min=0.001, max=24 * 3650), default=24 * 7, show_default=True,
              help="Accept feedback for decisions at most this many hours old.")
def feedback_cmd(log_dir, file, window_h):
    """Attach observed outcomes from FILE to the decisions logged in LOG (route --log, serve's [logging]).

    FILE is JSONL, one {"id": DECISION_ID, "score": 0..1, "cost": USD, "model": NAME} per line
    (cost and model optional; model defaults to the chosen one). Every line is checked
    first: a malformed line, an unknown or too old id, or a different score for an
    (id, model) that already has one is an error, and then nothing is recorded. The same
    outcome twice is recorded once. `lr-onnx refresh` learns from what is recorded.
    """
    from .runtime.feedback import FeedbackStore, read_feedback_file

    if not Path(log_dir).is_dir():
        raise click.UsageError(f"{_safe(log_dir)}: no such log folder")
    items = read_feedback_file(file)
    status = FeedbackStore(log_dir, window_h=window_h).add(items)
    click.echo(f"recorded {status.count('recorded')} outcome(s), {status.count('duplicate')} already recorded; "
               f"wrote to {log_dir}")


@main.command("refresh")
@click.option("--bundle", "bundle", required=True, type=click.Path(file_okay=False, path_type=str),
              help="The bundle that routed the logged decisions (never modified).")
@click.option("--log", "log_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="The decision log folder, with feedback attached.")
@click.option("--out", required=True, type=click.Path(path_type=str), help="The refreshed bundle folder to write.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Report JSON to write (default: OUT.report.json; a PNG beside it).")
@click.option("--retrain-share", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Verdict: retrain when more of the traffic than this is out of coverage.")
def refresh_cmd(bundle, log_dir, out, report, retrain_share):
    """Write OUT: BUNDLE updated from the feedback in LOG, without retraining (numpy, no torch).

    Labelled decisions join the capability memory, and each model's profile moves
    towards its observed scores (off-policy records weighted by inverse propensity).
    Only feedback newer than BUNDLE's last refresh is used. The report gives each
    model's predicted vs observed score, the out-of-coverage share, the chosen-model
    mix and a verdict: refresh is enough, or retrain.
    """
    from .runtime.refresh import refresh

    rep = refresh(bundle, log_dir, out, retrain_ooc_share=retrain_share, report=report)
    click.echo(f"refreshed from {rep['records_used']} labelled decision(s) ({rep['memory_rows_added']} memory rows); "
               f"wrote {out}")
    for name, v in rep["models"].items():
        pred = "n/a" if v["predicted"] is None else f"{v['predicted']:.3f}"
        click.echo(f"  {name[:28]:28s} {v['labels']:>6d} labels, predicted {pred}, observed {v['observed']:.3f}")
    click.echo(f"out of coverage: {rep['out_of_coverage_share']:.1%} of {rep['decisions']} decisions")
    click.echo(f"verdict: {rep['verdict']}")
    click.echo(f"report: {report or str(out) + '.report.json'}")


@main.command("serve")
@_BUNDLE
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything beyond loopback warns unless a gateway key is set.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="TOML file: upstreams per pool model ([models.NAME] base_url, api_key_env, upstream_model), "
                   "limits, batching, retries (README, 'Serving'). Without it: /v1/route only, every default.")
@click.option("--api-key-env", default=None, metavar="NAME",
              help="Environment variable holding the gateway key clients must send (Authorization: Bearer ...).")
@click.option("--strict", is_flag=True,
              help="Refuse to start when a [models.NAME] table's api_key_env names an unset or empty variable "
                   "(default: one warning per model).")
@_PROVIDER
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
        raise click.ClickException(f"serving needs the serve extra ({', '.join(missing)} not installed): "
                                   f"pip install '.[cpu,serve]'")
    from .serve.server import serve

    serve(bundle=bundle, host=host, port=port, config_path=config_path, api_key_env=api_key_env, provider=provider,
          strict=strict)


@main.command("info")
@_BUNDLE
@click.option("--json", "as_json", is_flag=True, help="Print the same facts as JSON (pool, graphs, preprocessing, "
                                                       "lambda and presets, coverage, providers, digest).")
def info_cmd(bundle, as_json):
    """Show a bundle: pool and prices, graphs, preprocessing, lambda, available providers."""
    from .runtime.bundle import load_bundle
    from .runtime.router import DEFAULT_BUNDLE
    from .runtime.sessions import ort

    b = load_bundle(bundle or DEFAULT_BUNDLE)
    m = b.manifest
    if as_json:
        keep = ("name", "price_in_per_mtok", "price_out_per_mtok", "expected_cost_usd", "image_tokens", "output_tokens")
        _echo_json({"bundle": str(b.path), "digest": b.digest, "schema_version": m["schema_version"],
                    "precision": m.get("precision"), "opset": m.get("opset"), "setting": m.get("setting"),
                    "pool": [{k: p.get(k) for k in keep} for p in m["pool"]],
                    "graphs": {n: {**g, "bytes": b.file(g["file"]).stat().st_size} for n, g in m["graphs"].items()},
                    "preprocessing": m["preprocessing"], "lambda": m.get("lambda", {}), "coverage": m.get("coverage"),
                    "memory": {k: v for k, v in m["memory"].items() if k != "files"} if "memory" in m else None,
                    "providers_available": ort().get_available_providers()})
        return
    click.echo(f"bundle {b.path} (schema {m['schema_version']}, {m.get('precision', '?')}, opset {m.get('opset', '?')}, "
               f"setting {m.get('setting', '?')}, encoders {m.get('encoder_version', '?')})")
    click.echo(f"{'model':28s} {'$/M in':>8s} {'$/M out':>8s} {'exp. cost $':>12s}  per-query cost")
    for p in m["pool"]:
        pi, po = p.get("price_in_per_mtok"), p.get("price_out_per_mtok")
        rule = p.get("image_tokens")
        rule = (rule if isinstance(rule, str) else (rule or {}).get("rule"))
        how = f"{rule}, {p['output_tokens']:g} output tokens" if rule and p.get("output_tokens") is not None \
            else "- (the constant)"
        click.echo(f"{p['name'][:28]:28s} {'-' if pi is None else f'{pi:g}':>8s} {'-' if po is None else f'{po:g}':>8s} "
                   f"{p['expected_cost_usd']:>12.3g}  {how}")
    for name, g in m["graphs"].items():
        size = b.file(g["file"]).stat().st_size
        click.echo(f"graph {name}: {g['file']} {size / 1e6:.1f} MB, inputs {g.get('inputs', '?')}")
    im = m["preprocessing"]["image"]
    click.echo(f"image: letterbox {im['size']} px, {im['resample']}, mean {im['mean']}, std {im['std']}; "
               f"text: {m['preprocessing']['text']['tokenizer_file']}, max {m['preprocessing']['text']['max_tokens']} tokens")
    lam = m.get("lambda", {})
    cov = m.get("coverage")
    if isinstance(cov, dict):
        click.echo(f"coverage: queries whose best similarity to the slice centroids is below {cov['threshold']:.4f} "
                   f"(the training queries' {cov.get('percentile', 1):g}st percentile) are flagged out of coverage")
    mem = m.get("memory")
    if mem:
        from .runtime.memory import MIN_CLOSENESS

        st = mem["settings"]
        click.echo(f"capability memory: {mem['rows']:,} labelled queries x {len(mem['models'])} models in {mem['dim']} "
                   f"dimensions; estimates from the {st['k']} nearest (pseudo-count {st['kappa']:g}); network "
                   f"correction {mem.get('blend', '?')} (0 = the memory alone); queries with closeness < {MIN_CLOSENESS:g} to it "
                   f"are flagged out of coverage too")
    calibrated = lam.get("calibrated")
    click.echo(f"lambda: default {lam.get('default', 0):g}" +
               (f" (calibrated: {calibrated.get('target')})" if isinstance(calibrated, dict) else ""))
    for name, p in lam.get("presets", {}).items():
        p = p if isinstance(p, dict) else {"lambda": p}
        score = (f", validation score {p['val_score']:.3f} at ${p['val_cost']:.2e}/query"
                 if isinstance(p.get("val_score"), (int, float)) and isinstance(p.get("val_cost"), (int, float)) else "")
        click.echo(f"  --lambda {name}: {p['lambda']:g}{score}")
    click.echo(f"providers available: {', '.join(ort().get_available_providers())}")


@main.command("doctor")
@_BUNDLE
@_PROVIDER
def doctor_cmd(bundle, provider):
    """Check the installation: ONNX Runtime wheels, providers bound, bundle hashes, golden parity."""
    from .runtime.manage import check_golden
    from .runtime.sessions import installed_ort_distributions, ort

    problems = 0
    dists = installed_ort_distributions()
    click.echo(f"onnxruntime wheels: {', '.join(dists) or 'none'}")
    if len(dists) > 1:
        problems += 1
        click.echo("  PROBLEM: several onnxruntime wheels are installed and overwrite each other; "
                   "pip uninstall them all, then install one of lr-onnx[cpu] / lr-onnx[gpu]")
    rt = ort()
    click.echo(f"providers available: {', '.join(rt.get_available_providers())}")
    router = _load_router(bundle, provider)  # verifies every sha256
    click.echo(f"bundle {router.bundle.path}: closed, {len(router.bundle.manifest['files'])} listed files, "
               f"sha256 verified")
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
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=str),
              help="Your labelled queries in the native format (outcomes of the bundle's models).")
@click.option("--max-avg-cost", type=_USD, default=None, help="Target: mean cost per query (USD) at most X.")
@click.option("--max-share", default=None, help="Target: MODEL:P, at most a share P of queries sent to MODEL.")
@click.option("--split", type=click.Choice(["all", "val", "test", "train"]), default="all", show_default=True,
              help="Which rows of DATA to calibrate on (a `split` field is needed for val/test/train).")
def calibrate_cmd(bundle, data_dir, max_avg_cost, max_share, split):
    """Pick lambda on your labelled data for one budget target and record it in the bundle's manifest.

    The feasible lambda with the highest mean score wins; the manifest is rewritten
    atomically and `route` uses the new default from then on.
    """
    import numpy as np

    from .export.data import load_dataset
    from .runtime.manage import calibrate, calibration_target, tradeoff

    share = None
    if max_share:
        model, _, p = max_share.rpartition(":")
        try:
            share = (model, float(p))
        except ValueError:
            raise click.BadParameter("expected MODEL:P with P in [0, 1]", param_hint="--max-share") from None
        if not model or not 0 <= share[1] <= 1:
            raise click.BadParameter("expected MODEL:P with P in [0, 1]", param_hint="--max-share")
    router = _load_router(bundle, "auto")
    calibration_target(router, max_avg_cost, share)  # a bad target is a usage error before anything is encoded
    data = load_dataset(data_dir)
    rows = [i for i in range(data.n) if split == "all" or data.split[i] == split]
    if not rows:
        raise click.ClickException(f"{data_dir}: no rows in split '{split}'")
    cols = [data.model_names.index(n) if n in data.model_names else -1 for n in router.names]
    if all(c < 0 for c in cols):
        raise click.ClickException(f"{data_dir}: none of the bundle's models has outcomes in this data")

    def take(M, fill):
        return np.stack([M[rows, c] if c >= 0 else np.full(len(rows), fill) for c in cols], axis=1)

    qs = [(data.images[i], data.question[i]) for i in rows]
    feats, meta = [], []
    with click.progressbar(range(0, len(qs), 64), label="encoding", file=sys.stderr) as bar:
        for s in bar:
            feats.append(router.features(qs[s:s + 64], meta=meta))
    res = calibrate(router, np.concatenate(feats), take(data.Y, np.nan), take(data.C, np.nan), take(data.A, False),
                    meta=meta, max_avg_cost=max_avg_cost, max_share=share)
    click.echo(f"{'lambda':>10s} {'mean score':>10s} {'mean cost $':>12s}" + (f" {'share':>6s}" if share else "")
               + "  meets the target")
    for p in tradeoff(res["points"]):
        mark = "*" if p["lambda"] == res["lambda"] else " "
        click.echo(f"{mark}{p['lambda']:>9.4g} {p['score']:>10.4f} {p['cost']:>12.4g}"
                   + (f" {p['share']:>6.3f}" if share else "") + f"  {'yes' if p['feasible'] else 'no'}")
    if not res["met"]:
        raise click.ClickException(f"no lambda meets the target on these {res['queries']} queries (see the table); "
                                   f"{bundle}/manifest.json was left as it was")
    click.echo(f"lambda {res['lambda']:g}: mean score {res['score']:.4f}, mean cost {res['cost']:.4g} on "
               f"{res['queries']} queries; recorded in {bundle}/manifest.json")


@main.group("bench", cls=_Group, invoke_without_command=True)
@click.option("--quick", is_flag=True, help="Fewer repeats: under 3 minutes on 2 cores.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="JSON output (default: benchmarks/results/<host>.json); a .md table is written beside it.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads per engine (default: all cores).")
@click.pass_context
def bench_cmd(ctx, quick, out, threads):
    """Latency, throughput, memory and cold start: ONNX Runtime fp32 / int8 vs PyTorch eager, side by side.

    Needs the training extra (torch) for the PyTorch rows. Same weights and inputs for
    every engine; the shipped default bundle is measured for cold start and memory.
    `lr-onnx bench serve` measures the HTTP gateway instead.
    """
    if ctx.invoked_subcommand:
        return
    from .export.bench import run_bench, table

    click.echo(table(run_bench(out, quick=quick, threads=threads)))


@bench_cmd.command("serve")
@click.option("--quick", is_flag=True, help="96 requests per level instead of 256, a 3 s overload phase.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="JSON output (default: benchmarks/results/serve.json).")
@_BUNDLE
def bench_serve_cmd(quick, out, bundle):
    """The gateway under load: q/s and p50/p95/p99 at concurrency 1, 8, 32 against in-process route_many.

    A stand-in upstream answers at once, so the router itself is measured; then 4x the
    sustainable load against a small queue (only 200 or 503 allowed); the server's peak RSS.
    """
    from .serve.bench import run_serve_bench, table

    result = run_serve_bench(out, quick=quick, bundle=bundle, progress=lambda m: click.echo(f"bench serve: {m}", err=True))
    click.echo(table(result))


if __name__ == "__main__":  # pragma: no cover
    main()
