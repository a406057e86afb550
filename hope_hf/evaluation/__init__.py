"""Evaluation helpers: lm-evaluation-harness entry point, long-context and continual-learning
evaluations. The scripts that run them and their results live under ``evaluation/``."""
