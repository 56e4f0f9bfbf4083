"""labelfix: find and fix wrong labels in image classification datasets.

    import labelfix
    issues = labelfix.find_label_issues(labels, pred_probs=pred_probs)   # arrays in, DataFrame out
    labelfix.scan("images", labels_csv="labels.csv", out="run")          # the CLI's commands

Names are imported on first use, so `import labelfix` stays light.
"""

__version__ = "0.3.0"

_EXPORTS = {
    "find_label_issues": "labelfix.api",
    "refine_labels": "labelfix.api",
    "scan": "labelfix.api",
    "refine": "labelfix.api",
    "distill": "labelfix.api",
    "predict": "labelfix.api",
    "ScanConfig": "labelfix.config",
    "TeacherConfig": "labelfix.config",
    "RefineConfig": "labelfix.core.refine",
    "DistillConfig": "labelfix.commands.distill",
    "LabelfixError": "labelfix.errors",
    "InputError": "labelfix.errors",
    "RunDirError": "labelfix.errors",
    "WeakTeacher": "labelfix.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'labelfix' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
