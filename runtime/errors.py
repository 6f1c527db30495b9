"""The one exception family of lr-onnx.

Library code raises these; only `cli.py` turns them into a one-line `Error: ...`
and an exit code. Messages name the offending thing and, where there is one, the fix.
"""


class LrOnnxError(Exception):
    """Base class: anything lr-onnx raises on purpose."""


class InputError(LrOnnxError):
    """A user-supplied input (image, question, option value) is unusable."""


class OptionError(InputError):
    """An option names something that does not exist here (a preset, a model) or leaves nothing to do:
    a usage error, so the CLI exits 2 for it."""


class DataError(LrOnnxError):
    """A routing dataset on disk is malformed; the message carries file and line."""


class BundleError(LrOnnxError):
    """A bundle is missing, corrupted, or from an incompatible schema version."""


class ProviderError(LrOnnxError):
    """An execution provider was requested that this onnxruntime cannot offer."""


class MissingDependencyError(LrOnnxError):
    """An optional extra (e.g. `[export]`, `[cpu]`) is needed for this command."""


class LrOnnxWarning(UserWarning):
    """Works, but not as asked (a question truncated, a provider that did not bind): the CLI prints one line."""
