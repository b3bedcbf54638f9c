"""Benchmarks (not tests): `python -m benchmarks.train_step`, `python -m benchmarks.generation`.

Each one times our code and a peer (transformers' GPT-2) interleaved in one process, on the same
weights and data, and prints medians, tokens/s and ratios. Results: docs/benchmarks.md.
"""
