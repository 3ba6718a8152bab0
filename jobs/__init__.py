"""Ray batch jobs and the `grec` command line: prepare data, train, evaluate, predict, registry."""
