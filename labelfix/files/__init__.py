"""Files: reading the user's inputs, the run directory, atomic writes and Parquet."""
