"""Runs, qrels, metrics (ranx), answer-match accuracy, reports and load simulation."""
