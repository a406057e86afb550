"""hope-hf's experiments: runners by topic (``python -m evaluation.<topic>.<runner>``) on one small
library, ``evaluation.lib`` (results files, corpora with their splits, models, the training run,
sweeps). docs/experiments.md maps each experiment to its command, results file and doc page."""
