"""`grec tune`: hyperparameter search over the training job with Ray Tune."""
