"""When heavy work may run: concurrency, maintenance windows, peak hours and resource thresholds."""
