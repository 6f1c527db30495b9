"""Dataset commands: data check, convert, merge and demo."""

from __future__ import annotations


import click

from .base import Group, echo_json, main, ANY_PATH, FILE_PATH, FOLDER, FOLDER_PATH, SEED


@main.group(cls=Group)
def data():
    """Routing datasets in the native format: check, convert, merge, generate the demo benchmark."""


@data.command("check")
@click.argument("directory", type=FOLDER_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--strict-images", is_flag=True, help="Treat a missing image file as an error (default: counted).")
def data_check(directory, as_json, strict_images):
    """Validate DIRECTORY (queries.jsonl + models.json) and report what it holds.

    Prints queries, models, datasets, images, the split, per-model mean score and
    cost per split, best single model, oracle, random router and the coverage
    matrix. For datasets with difficulty metadata (the demo benchmark) it also
    measures the properties of a fair multimodal routing test.
    """
    from ..export.data.check import format_report, summarize
    from ..export.data.format import load_dataset

    report = summarize(load_dataset(directory, strict_images=strict_images))
    if as_json:
        echo_json(report)
    else:
        click.echo(format_report(report))


@data.group("convert", cls=Group)
def data_convert():
    """Convert a published routing benchmark into the native format."""


@data_convert.command("mmr")
@click.argument("src", type=FOLDER)
@click.argument("out", type=ANY_PATH)
@click.option(
    "--mmr-official-split",
    is_flag=True,
    help="Reproduce MMR-Bench's split (train_size=0.2, random_state=42, CSV order) "
    "instead of the generated 70/10/20 split.",
)
def convert_mmr(src, out, mmr_official_split):
    """MMR-Bench: SRC holds MMR_Bench.csv and the image folders (or images.tar.gz). OUT must not exist."""
    from ..export.data.convert import convert_mmr as run

    summary = run(src, out, official_split=mmr_official_split)
    click.echo(
        f"wrote {summary['rows']} queries x {summary['models']} models to {out} "
        f"({summary['missing_images']} rows without an image file)"
    )


@data_convert.command("vl-routerbench")
@click.argument("src", type=click.Path(exists=True, path_type=str))
@click.argument("out", type=ANY_PATH)
def convert_vl(src, out):
    """VL-RouterBench: SRC is the matrices layout, an extracted vlm_router_data/, or vlm_router_data.tar.gz.

    Archives are extracted member by member (absolute paths, '..', links and device
    files are refused); pickled registries are read only if they hold plain lists or
    dicts, and VLMEvalKit .pkl result files are skipped with a warning. OUT must not exist.
    """
    from ..export.data.convert import convert_vl_routerbench as run

    summary = run(src, out)
    click.echo(
        f"wrote {summary['rows']} queries x {summary['models']} models to {out} "
        f"(layout {summary['layout']}, cost_mode {summary['cost_mode']})"
    )
    for w in summary.get("warnings", []):
        click.echo(f"warning: {w}", err=True)


@data.command("demo")
@click.argument("out", type=ANY_PATH)
@click.option("--n", "n", type=click.IntRange(min=50), default=12000, show_default=True, help="Number of queries.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for images, questions and outcomes.")
@click.option("--workers", type=click.IntRange(1, 256), help="Rendering processes (default: CPU count; at most 256).")
@click.option(
    "--skills",
    type=FILE_PATH,
    help="The published-accuracy table (default: ../shared/data/mllm-skills/skills.json beside the "
    "checkout, or $LR_ONNX_SKILLS).",
)
def data_demo(out, n, seed, workers, skills):
    """Write the multimodal demo routing benchmark to OUT (which must not exist).

    Real rendered and photographed images (documents and receipts, charts,
    tables, geometry diagrams, photos, spatial layouts) plus text-only queries,
    each with a correct answer. Model OUTCOMES ARE SIMULATED from a documented
    latent skill model calibrated to published per-family accuracies of real
    MLLMs, priced with their published per-token prices (see OUT/README.md).
    """
    from ..export.data.demo import build_demo

    summary = build_demo(out, n=n, seed=seed, workers=workers, skills=skills)
    click.echo(
        f"wrote {summary['queries']} queries ({summary['images']} images, "
        f"{summary['mean_image_kb']:.1f} KB mean) x {summary['models']} models to {out} "
        f"in {summary['seconds']:.1f} s"
    )


@data.command("merge")
@click.argument("out", type=ANY_PATH)
@click.argument("sources", nargs=-1, required=True, type=FOLDER)
def data_merge(out, sources):
    """Merge native datasets SOURCES... into OUT (which must not exist).

    The pool is the union of the sources' models by name; a model a source never ran is
    unavailable on that source's queries (a ragged pool, which training, evaluation and every
    baseline handle). Labels get their source's folder name as prefix (kept if already there),
    colliding ids get `<source>:`, images are linked or copied into OUT/images/<source>/, and
    each source's own split is kept. A model must have the same prices in every source.
    """
    from ..export.data.merge import merge_datasets

    s = merge_datasets(out, list(sources))
    click.echo(f"wrote {s['queries']} queries x {s['models']} models to {out}")
    for name, v in s["per_source"].items():
        click.echo(
            f"  {name}: {v['queries']} queries, {len(v['models'])} models, split {v['split']}"
            + (f", {v['ids_prefixed']} ids prefixed" if v["ids_prefixed"] else "")
        )
