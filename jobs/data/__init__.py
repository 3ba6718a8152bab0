"""`grec data ...`: the command line of the feature store's jobs (prepare, materialize, init,
declaration-schema); the jobs themselves are feature_store's."""
