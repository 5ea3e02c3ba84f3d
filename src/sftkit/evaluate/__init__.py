"""Evaluation: baseline-versus-tuned scoring, metrics, and the run report."""
