"""Datasets: the native format and its validator, splits, `data check`, converters, merging, the demo benchmark."""
