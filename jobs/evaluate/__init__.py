"""`grec evaluate` (cli.py), offline evaluation: batch inference with Ray Data, per-task metrics,
slices, bootstrap intervals, leave-last-out ranking, and a Markdown report with plots logged to the
model's MLflow run."""
