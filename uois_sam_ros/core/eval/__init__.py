"""Evaluation: the paper's metrics and visualisation."""
