"""Evaluation: the baselines on the same features and policy, the routing metrics, `lr-onnx evaluate` and transfer
to another dataset."""
