"""The Ray Serve application: FastAPI ingress, online feature lookup, batched per-task ranking."""
