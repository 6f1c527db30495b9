"""`python -m lr_onnx.cli`."""

from . import main

main()
