"""genesis-dr core: plain Python, never imports prefect (enforced by import-linter)."""
