"""The `lr-onnx` command line: parse, call the library, print. One module per command group (serving, data,
training, bundle, bench) registers its commands on `main` (cli/base.py); the logic lives in the library.

Commands import their implementation inside the function body, so `lr-onnx --help` stays fast and the serving
commands never load the training side. Library errors (`LrOnnxError`) become one `Error: ...` line and exit 1;
bad arguments, and options that name something the bundle does not have (`OptionError`), exit 2.
"""

from . import bench, bundle, data, serving, training  # noqa: F401  (each registers its commands)
from .base import main

__all__ = ["main"]
