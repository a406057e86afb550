"""Speed benchmarks: ``python -m evaluation.benchmarks.<name>``; see README.md."""
