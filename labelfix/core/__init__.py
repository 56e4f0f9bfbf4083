"""Array algorithms: pure functions on numpy arrays, no files, no torch training."""
