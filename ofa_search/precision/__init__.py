"""Precision as a dimension of an arch: per-layer summaries
(:mod:`~ofa_search.precision.summary`) and the end-to-end fp32 / int8 / binary benchmark
(:mod:`~ofa_search.precision.benchmark`)."""
