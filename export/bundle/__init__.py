"""Bundle making: graphs exported from PyTorch, quantisation, assembly of the bundle folder, the checks run on the
bundle written (parity, golden), its model card, and `lr-onnx bench` on it."""
