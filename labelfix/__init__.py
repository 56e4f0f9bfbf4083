"""labelfix: find and fix wrong labels in image classification datasets."""

__version__ = "0.3.0"
