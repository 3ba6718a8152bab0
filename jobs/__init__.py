"""Ray batch jobs and the `grec` command line, one package per command family (data, train, tune,
retrieval, serve, evaluate, registry, predict, compact, config), each with its commands' options in
`cli.py` beside the jobs they run; `cli.py` here assembles them, `options.py` holds the options
several share and `ray_runtime.py` is the one Ray set-up every job uses."""
