"""Commands: the thin shells behind the CLI (read inputs, call the core, write the run)."""
