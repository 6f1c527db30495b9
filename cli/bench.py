"""Benchmarks from the command line: bench (runtime) and bench serve (the gateway)."""

from __future__ import annotations


import click

from .base import Group, main, BUNDLE_OPTION, FILE_PATH


@main.group("bench", cls=Group, invoke_without_command=True)
@click.option("--quick", is_flag=True, help="Fewer repeats: under 3 minutes on 2 cores.")
@click.option(
    "--out",
    type=FILE_PATH,
    help="JSON output (default: benchmarks/results/<host>.json); a .md table is written beside it.",
)
@click.option("--threads", type=click.IntRange(1, 256), help="Threads per engine (default: all cores; at most 256).")
@click.pass_context
def bench_cmd(ctx, quick, out, threads):
    """Latency, throughput, memory and cold start: ONNX Runtime fp32 / int8 vs PyTorch eager, side by side.

    Needs the training extra (torch) for the PyTorch rows. Same weights and inputs for
    every engine; the shipped default bundle is measured for cold start and memory.
    `lr-onnx bench serve` measures the HTTP gateway instead.
    """
    if ctx.invoked_subcommand:
        return
    from ..export.bundle.bench import run_bench, table

    click.echo(table(run_bench(out, quick=quick, threads=threads)))


@bench_cmd.command("serve")
@click.option("--quick", is_flag=True, help="96 requests per level instead of 256, a 3 s overload phase.")
@click.option(
    "--out",
    type=FILE_PATH,
    help="JSON output (default: benchmarks/results/serve.json).",
)
@BUNDLE_OPTION
def bench_serve_cmd(quick, out, bundle):
    """The gateway under load: q/s and p50/p95/p99 at concurrency 1, 8, 32 against in-process route_many.

    A stand-in upstream answers at once, so the router itself is measured; then 4x the
    sustainable load against a small queue (only 200 or 503 allowed); the server's peak RSS.
    """
    from ..serve.loadtest import run_serve_bench, table

    result = run_serve_bench(
        out, quick=quick, bundle=bundle, progress=lambda m: click.echo(f"bench serve: {m}", err=True)
    )
    click.echo(table(result))
