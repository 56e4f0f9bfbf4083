"""Models: the auto teacher, pretrained loaders, the student and their one training loop."""
