"""graphc's benchmark suite (run as `python -m benchmarks.<name>`)."""
