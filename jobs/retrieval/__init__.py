"""`grec build-index`: a model version's recommendation stage (recommend/), fitted as a Ray job
(job.py; the command's options in cli.py)."""
