# The two commands a fresh machine needs (see README.md). Both set up .venv first (idempotent).
.PHONY: setup demo test

setup:
	bash scripts/setup.sh

# Set up, then run the main job on the embedded default (local Ray, MLflow on SQLite,
# the SQLite online store, MovieLens-100K).
demo: setup
	bash scripts/main_job.sh

# Set up, then run the whole test suite.
test: setup
	.venv/bin/python -m pytest
