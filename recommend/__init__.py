"""The recommendation path as a library: candidate sources, the terms each candidate is ranked by,
the blends fitted per task, and the ranked list. The endpoint (serving/), the offline evaluation and
the batch job (jobs/) all run this code, so what is measured is what is served.

Imports grec and feature_store, never Ray, MLflow or the serving framework.
"""
