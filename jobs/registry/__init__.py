"""`grec promote` and `grec seal`: the commands that change what the MLflow registry says about a
version, the promotion gate (promote.py) and the manifest of an old version. The registry code they
use is the top-level `registry` package, which serving shares."""
