"""`grec serve`: start the serving application (the top-level `serving` package) on Ray Serve."""
