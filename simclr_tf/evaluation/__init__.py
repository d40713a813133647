"""Evaluation: features, kNN, linear probe and the evaluators that yield metrics."""
