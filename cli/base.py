"""The `lr-onnx` command line: the group, its one-line error handling and the options commands share.

Commands import their implementation inside the function body, so `lr-onnx --help`
stays fast and the serving commands never load the training side. Library errors
(`LrOnnxError`) become one `Error: ...` line and exit 1; bad arguments, and options
that name something the bundle does not have (`OptionError`), exit 2.
"""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import click

from ..runtime.bounds import MAX_COST_USD, MAX_LAMBDA, MAX_PRICE_PER_MTOK
from ..version import __version__


class Group(click.Group):
    """A click group that turns lr-onnx errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx):
        import warnings

        from ..runtime.errors import LrOnnxError, LrOnnxWarning, OptionError

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
            raise OneLine(str(e), exit_code=2) from None
        except LrOnnxError as e:
            raise OneLine(str(e)) from None
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise  # a bug: its traceback is wanted
            where = f"{e.filename}: " if e.filename else ""
            raise OneLine(f"{where}{e.strerror}") from None  # a full disk, no permission
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in EXPORT_MODULES:
                raise click.ClickException(
                    f"this command needs the training extra ({e.name} is not installed): pip install -e '.[export]'"
                ) from None
            raise


# the machine's state, not the user's input nor a bug: said in one line (what was written before is kept: staged)
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


class OneLine(click.ClickException):
    """`Error: ...` on one line, whatever the message holds (lone surrogates from argv, newlines)."""

    def __init__(self, message: str, exit_code: int = 1):
        clean = " ".join(message.encode("utf-8", "backslashreplace").decode("utf-8").split())
        super().__init__(clean)
        self.exit_code = exit_code


EXPORT_MODULES = {
    "torch",
    "onnx",
    "onnxscript",
    "sklearn",
    "skimage",
    "matplotlib",
    "safetensors",
    "tqdm",
    "pyarrow",
    "openpyxl",
    "optimum",
    "transformers",
}


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, allow_nan=False))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lr-onnx")
def main():
    """lr-onnx: pick the multimodal LLM with the best expected utility for an image+question query.

    Training side (pip install -e '.[export]'): data, train, evaluate, export.
    Serving side (pip install '.[cpu]' or '.[gpu]'): route, route-batch, info, doctor, models, calibrate,
    feedback, refresh; no PyTorch.
    HTTP gateway (pip install '.[cpu,serve]'): serve. Ray batch routing ('.[cpu,ray]'): route-batch --engine ray.
    """


def split_names(value: str | None, option: str = "--models") -> list[str] | None:
    if value is None:
        return None
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out:
        raise click.UsageError(f"{option} {value!r} names no model; leave the option out to allow every model")
    return out


def route_options(router, models, exclude, lam, max_cost, explore, explain=False):
    """The command's routing options, resolved once (`Router.options`) before any query is read."""
    models, exclude = split_names(models), split_names(exclude, "--exclude")
    return router.options(models=models, exclude=exclude, lam=lam, max_cost=max_cost, explain=explain, explore=explore)


def load_router(bundle, provider):
    from ..runtime.router import Router

    return Router.load(bundle, provider=provider)


def start_log(router, log_dir, content):
    if log_dir is None:
        if content:
            raise click.UsageError("--log-content needs --log DIR")
        return None
    return router.start_log(log_dir, content=content)


def note_dropped(files) -> None:
    """Say which baked graphs an edited bundle copy left out (runtime.manage.write_edited)."""
    for f in files:
        click.echo(
            f"note: {f} was left out of the copy: it bakes in the old pool and memory; "
            "re-export the run with --fused for a new one",
            err=True,
        )


def close_log(log) -> None:
    if log is not None:
        log.close()
        if log.dropped:
            click.echo(
                f"warning: {log.dropped} decision(s) could not be logged to {log.folder} (disk full or "
                f"unwritable); routing was not affected",
                err=True,
            )


class Number(click.ParamType):
    """A finite float in [lo, hi] (click's FloatRange lets nan, inf and 400-digit numbers through), or a preset
    name when `presets` is set. The bounds are the library's own, so CLI and API refuse the same values."""

    name = "number"

    def __init__(self, hi: float, presets: bool = False, lo: float = 0.0):
        self.hi, self.presets, self.lo = hi, presets, lo

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            v = float(value)
        except (TypeError, ValueError):
            if self.presets and isinstance(value, str) and value.replace("_", "").isalnum() and value.isascii():
                return value  # checked against the bundle's presets when it is loaded
            self.fail(f"{printable(value)!r} is not a number", param, ctx)
        if not math.isfinite(v) or not self.lo <= v <= self.hi:
            self.fail(
                f"{printable(value)[:40]!r} must be a finite number between {self.lo:g} and {self.hi:g}", param, ctx
            )
        return v


def is_file(s: str) -> bool:
    try:
        return len(s) < 4096 and Path(s).is_file()
    except (OSError, ValueError):
        return False


def printable(value) -> str:
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


LAMBDA = Number(MAX_LAMBDA, presets=True)
USD = Number(MAX_COST_USD)
PRICE = Number(MAX_PRICE_PER_MTOK)
SEED = click.IntRange(0, 2**32 - 1)  # what numpy's and torch's generators take (a negative one was a traceback)


def check_bundle_path(ctx, param, value):
    if value is not None and not value.strip():
        raise click.BadParameter("is empty; leave the option out for the default bundle")
    return value


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# the kinds of path the commands take (click checks existence where it says so)
FOLDER = click.Path(exists=True, file_okay=False, path_type=str)  # an existing folder
FILE = click.Path(exists=True, dir_okay=False, path_type=str)  # an existing file
FOLDER_PATH = click.Path(file_okay=False, path_type=str)  # a folder, existing or to be written
FILE_PATH = click.Path(dir_okay=False, path_type=str)  # a file, existing or to be written
ANY_PATH = click.Path(path_type=str)

BUNDLE_OPTION = click.option(
    "-b",
    "--bundle",
    type=ANY_PATH,
    callback=check_bundle_path,
    help="Bundle folder (default: the bundle shipped in assets/).",
)
LOG_OPTION = click.option(
    "--log",
    "log_dir",
    type=FOLDER_PATH,
    help="Append each decision (id, pool, choice, every candidate's mu, sigma and cost, the query's "
    "compact embedding) to the decision log in this folder, for `lr-onnx feedback` and "
    "`lr-onnx refresh`. No question or image is stored unless --log-content.",
)
LOG_CONTENT_OPTION = click.option(
    "--log-content", is_flag=True, help="With --log: also store each question and its images' sizes (user content)."
)
EXPLORE_OPTION = click.option(
    "--explore",
    metavar="POLICY",
    help="Opt-in exploration, so feedback can teach the router about models it rarely picks: "
    "off, thompson[:S] (choose by a draw from mu_tilde +/- S sigma / sqrt(1 + n), n the outcomes "
    "the router holds for the model among the query's nearest labelled queries) or epsilon:P (a random "
    "candidate with probability P). The decision records its propensity.",
)
PROVIDER_OPTION = click.option(
    "--provider",
    type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
    default="auto",
    show_default=True,
    help="Execution provider; auto = TensorRT > CUDA > CPU, as available.",
)
