"""The repository root is the `lr_onnx` package: it must work as a package and as a pytest root of any name."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import REPO


def test_suite_collects_from_a_clone_whose_folder_is_not_an_identifier(tmp_path):
    """`git clone ... lr-onnx`: pytest imports the root __init__.py as a lone module; it must not fail there."""
    root = tmp_path / "lr-onnx"
    (root / "tests").mkdir(parents=True)
    for name in ("__init__.py", "version.py", "setup.cfg"):
        shutil.copy(REPO / name, root / name)
    (root / "tests" / "test_probe.py").write_text("def test_probe():\n    assert 1 + 1 == 2\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout


def test_error_classes_and_version_come_from_the_package_root():
    import lr_onnx
    from lr_onnx import BundleError, DataError, InputError, LrOnnxError, OptionError, __version__
    from lr_onnx.runtime import errors
    from lr_onnx.version import __version__ as v

    assert (InputError, OptionError, BundleError, DataError) == (
        errors.InputError,
        errors.OptionError,
        errors.BundleError,
        errors.DataError,
    )
    assert issubclass(OptionError, InputError) and issubclass(InputError, LrOnnxError)
    assert __version__ == v
    assert set(lr_onnx.__all__) >= {"Router", "InputError", "__version__"}
