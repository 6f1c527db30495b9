"""Training-side commands: train, evaluate, export (PyTorch, the [export] extra)."""

from __future__ import annotations

from pathlib import Path

import click

from .base import main, ANY_PATH, FOLDER, SEED


@main.command("train")
@click.argument("data_dir", type=FOLDER)
@click.option("--out", "out", required=True, type=ANY_PATH, help="Run folder to write.")
@click.option(
    "--setting",
    type=click.Choice(["performance", "cost"]),
    default="performance",
    show_default=True,
    help="performance: utility = score; cost: utility = score - 0.03 x normalised cost.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="At most this many epochs; early stopping (patience 5) on the validation utility.",
)
@click.option("--seed", type=SEED, default=20260308, show_default=True)
@click.option("--no-few-shot", is_flag=True, help="Ablation: no few-shot profile simulation (method.md 3.4).")
@click.option("--no-pool-dropout", is_flag=True, help="Ablation: no random sub-pools in training (method.md 3.4).")
@click.option(
    "--layers",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Latent communication layers (0 = the no-communication ablation).",
)
@click.option("--text-only", is_flag=True, help="Ablation: ignore the image part of the query features.")
@click.option(
    "--keep-images",
    is_flag=True,
    help="Always read images: do not train the text-only twin that validation would otherwise choose between.",
)
@click.option(
    "--no-memory",
    is_flag=True,
    help="Ablation: no capability memory (the k nearest labelled queries' outcomes per model).",
)
@click.option(
    "--one-memory-setting",
    is_flag=True,
    help="Ablation: on merged data, read the memory with one setting for every source (default: a setting per "
    "source with enough validation rows, chosen on its own rows).",
)
@click.option(
    "--pca-space",
    is_flag=True,
    help="Ablation: retrieve the memory's neighbours in the PCA space alone (default: the space may be stretched "
    "along the directions that predict the outcomes, if that routes validation better by a paired test at 5%).",
)
def train_cmd(
    data_dir,
    out,
    setting,
    epochs,
    seed,
    no_few_shot,
    no_pool_dropout,
    layers,
    text_only,
    keep_images,
    no_memory,
    one_memory_setting,
    pca_space,
):
    """Train LatentRouter on DATA_DIR's train split with early stopping on validation.

    Writes OUT/weights.safetensors, config.json, profiles.json, preprocessing.json and
    curves.json. Query features are computed once by the frozen encoders and cached
    (see LR_ONNX_CACHE). Same seed and thread count, same result (OMP_NUM_THREADS: torch sums
    in another order on another count of threads; the README's grid ran on one).

    The router reads a capability memory of the training queries: for each model, its
    outcomes on the query's nearest labelled neighbours. Its settings (neighbours,
    shrinkage, image weight, size) and how far the network may correct it are chosen on
    validation and written to OUT/config.json and OUT/memory_selection.json. Its retrieval
    space (PCA of the text and image vectors) is stretched along the directions that
    predict the outcomes only if that routes validation better by a paired test at 5%.

    On data with images the router is trained a second time on the questions alone, kept
    instead only if it routes validation better by a paired test at 5% (--keep-images
    skips this).
    The other is kept as OUT/ablations/text_only or OUT/ablations/with_images; a bundle
    exported from a text-only run never runs its image encoder.

    OUT must be new (or an empty folder): the run is written to a temporary folder that
    becomes OUT only when training has finished, so an interrupted run leaves nothing and
    an earlier run is never overwritten or mixed with this one.
    """
    from ..export.files import staged_output
    from ..export.train.trainer import TrainConfig, train

    if text_only and keep_images:
        raise click.UsageError("--text-only and --keep-images contradict each other; give one")
    cfg = TrainConfig(
        setting=setting,
        epochs=epochs,
        seed=seed,
        layers=layers,
        text_only=text_only,
        memory=not no_memory,
        memory_per_source=not one_memory_setting,
        memory_align=not pca_space,
    )
    if no_few_shot:
        cfg.few_shot = 0.0
    if no_pool_dropout:
        cfg.pool_dropout = 0.0
    with staged_output(out) as work:
        summary = train(data_dir, work, cfg)
        blend = summary.get("blend")
        click.echo(
            f"trained in {summary['seconds']:.1f} s ({summary['epochs_run']} epochs): "
            + (
                f"validation utility {summary['best_val_utility']:.4f} for the network alone, "
                f"{summary['val_utility_routed']:.4f} as it routes: its capability memory corrected by the network "
                f"at strength {blend:g} (chosen on validation; 0 = the memory alone)"
                if blend is not None
                else f"best validation utility {summary['best_val_utility']:.4f}"
            )
        )
        if summary.get("memory_align"):
            click.echo(
                f"the memory's space is stretched toward the outcomes (strength {summary['memory_align']:g}): it "
                "routed validation better than the PCA space alone by a paired test at 5%"
            )
        choice = None
        if not (text_only or keep_images):
            from ..export.train.modality import choose_modality

            choice = choose_modality(data_dir, work)
    click.echo(f"wrote {out}")
    if choice is not None:
        u = choice["val_utility"]
        click.echo(
            f"reads {'images and text' if choice['chosen'] == 'images' else 'text only'}: validation utility "
            f"{u['images']:.4f} with images, {u['text']:.4f} without (paired z {choice['z']:.2f}; text only "
            f"needs {choice['z_needed']:.2f})"
        )


@main.command("evaluate")
@click.argument("run_dir", type=FOLDER)
@click.option(
    "--data",
    "data_dir",
    type=FOLDER,
    help="Dataset folder (default: the one the run was trained on). Another dataset: transfer "
    "evaluation, the run as trained, on the models both pools share (RUN/transfer_NAME.json).",
)
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option(
    "--no-ablations",
    is_flag=True,
    help="Skip training the ablations (no_communication, text_only / with_images, no_memory, no_slice_prior, "
    "one_memory_setting, pca_space).",
)
def evaluate_cmd(run_dir, data_dir, split, no_ablations):
    """Compare the trained router with the baselines; write metrics.json, frontier.png, report.md.

    Methods: latentrouter, its memory alone (memory_only) and its network alone
    (network_only), the retrained ablations no_memory, no_slice_prior, no_communication,
    text_only and with_images (the one the router reads is the router itself), one_memory_setting
    and pca_space (only where the run's memory reads a merge per source / a stretched space),
    and the baselines knn, mf, mlp, irt, task_lookup, random and
    best_single, all on the same features, split, expected costs and lambda grid.
    Lambda for the rank score is chosen on validation, never on the test split.
    Also written: per-dataset results, pool shift, the routing-collapse diagnostic,
    the uncertainty quality of mu / sigma and the named lambda presets.
    """
    from ..export.evaluate.report import evaluate

    from ..export.train.rundir import CONFIG, RunDir

    trained_on = (RunDir.of(run_dir).read_json(CONFIG, required=False) or {}).get("data")
    if data_dir and trained_on and Path(data_dir).resolve() != Path(trained_on).resolve():
        from ..export.evaluate.transfer import transfer_evaluate

        t = transfer_evaluate(run_dir, data_dir, split=split)
        lr, b = t["latentrouter"], t["best_single"]
        click.echo(
            f"transfer to {data_dir} ({t['rows']} queries, {t['split']}; shared models: "
            f"{', '.join(t['shared_models'])}): latentrouter {lr['score_at_lambda0']:.4f} at lambda 0, nAUC "
            f"{_nauc(lr['nauc'])}; best single {b['name']} {b['score']:.4f}; oracle {t['oracle']['score']:.4f}; "
            f"wrote {run_dir}/transfer_{Path(data_dir).resolve().name}.json"
        )
        return
    out = evaluate(run_dir, data_dir=data_dir, split=split, ablations=not no_ablations)
    m = out["methods"]["latentrouter"]
    b, picked = out["best_single"], out["methods"]["best_single"]["score_at_lambda0"]  # hindsight; validation's
    click.echo(
        f"latentrouter: score {m['score_at_lambda0']:.4f} at lambda 0 (best single model in hindsight: {b['name']} "
        f"{b['score']:.4f}"
        + (f"; validation's best single model: {picked:.4f}" if picked is not None else "")
        + f"), nAUC {_nauc(m['nauc'])}, QNC {_qnc(m['qnc'])}; wrote {run_dir}/metrics.json, frontier.png, report.md"
    )


def _qnc(x) -> str:
    """QNC: the cheapest cost at which the router matches the best single model's quality, over that model's cost."""
    if x == "inf":
        return "inf (never matches the best single model's quality)"
    return "n/a" if x is None else f"{x:.3g} (matches the best single model's quality at {x:.0%} of its cost)"


def _nauc(x) -> str:
    return "n/a (the frontier is one point)" if x is None else f"{x:.4f}"


@main.command("export")
@click.argument("run_dir", type=FOLDER)
@click.option("--out", "out", required=True, type=ANY_PATH, help="Bundle folder (must not exist).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8", "int8-full", "fp16"]),
    default="fp32",
    show_default=True,
    help="int8: MiniLM with 8-bit weights, the image CNN kept fp32 (the default bundle's choice; holds "
    "98% decision agreement); int8-full: the CNN too (static QDQ; faster on CPU, but changes 2-4% of "
    "decisions, so its export fails the 98% bar); fp16: for GPUs.",
)
@click.option(
    "--opset",
    type=click.IntRange(18, 23),
    default=18,
    show_default=True,
    help="ONNX opset (torch 2.13's exporter implements 18 and later).",
)
@click.option("--fused", is_flag=True, help="Also write fused.onnx: pixels + token ids + pool -> scores in one graph.")
def export_cmd(run_dir, out, precision, opset, fused):
    """Export a trained run to an ONNX bundle and check it (writes OUT/parity.json).

    Graphs: image encoder, text encoder, router (dynamic batch and candidate count),
    plus tokenizer.json and manifest.json (sha256 of every file, preprocessing, pool,
    lambda presets, training metrics). The router always stays fp32.
    """
    from ..export.bundle.assemble import export_bundle

    parity = export_bundle(run_dir, out, precision=precision, opset=opset, fused=fused)
    h = parity["held_out"]
    status = "passed" if parity["passed"] else "FAILED"
    click.echo(
        f"wrote {out}: parity {status} (max |d mu_tilde| {h['max_abs_diff']['mu_tilde']:.2e}, "
        f"decision agreement {h['decision_agreement_lambda0']:.1%} at lambda 0, changed decisions lose "
        f"{h['changed_decision_regret_lambda0']['mean']:.4f} mu_tilde on average)"
    )
    if not parity["passed"]:
        raise click.ClickException(f"the exported bundle misses the parity bars; see {out}/parity.json")
