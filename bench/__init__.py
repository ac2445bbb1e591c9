"""sse_notify benchmarks (``python -m bench --help``). Never run as timed tests."""
