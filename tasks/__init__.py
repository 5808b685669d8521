"""@task adapters: load config, call one core function, return a small result."""
