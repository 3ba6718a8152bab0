"""`grec config-reference`: the configuration reference (docs/CONFIG.md), generated from the config
models (reference.py)."""
