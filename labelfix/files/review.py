"""Files a labeller works from: `review.csv` (every row refine would change or wants a person to
look at, most likely wrong first) and `labelstudio.json`, the same rows as Label Studio tasks
with labelfix's suggestion as a pre-annotation (a "prediction").

Label Studio set-up (README "Review in Label Studio"): serve the images folder as local files
(LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true, LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<images
folder>), and use the labeling config written by `label_studio_config`.
"""

from __future__ import annotations

import html
from urllib.parse import quote

import numpy as np
import pandas as pd

REVIEW_COLUMNS = ("path", "given", "suggested", "score", "ambiguity", "action")


def review_rows(refined: pd.DataFrame, scan: pd.DataFrame) -> pd.DataFrame:
    """Rows whose action is relabel or review, or that scan flagged, ordered by issue score."""
    action = refined["action"].to_numpy()
    score = scan["issue_score"].to_numpy().astype(np.float64)
    suggested = np.where(
        refined["refined_label"].to_numpy() != refined["given_label"].to_numpy(),
        refined["refined_label"].to_numpy(),
        scan["suggested_label"].to_numpy(),
    )
    keep = (action != "keep") | scan["is_issue"].to_numpy().astype(bool)
    rows = pd.DataFrame(
        {
            "path": refined["path"].to_numpy(),
            "given": refined["given_label"].to_numpy(),
            "suggested": suggested,
            "score": np.round(score, 4),
            "ambiguity": np.round(refined["ambiguity"].to_numpy().astype(np.float64), 4),
            "action": action,
        }
    )
    return rows[keep].sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def label_studio_tasks(rows: pd.DataFrame, version: str) -> list[dict]:
    """Label Studio JSON tasks: the image (served as local files, path relative to the document
    root), the given label in `data`, and the suggestion as a prediction with its score."""
    tasks = []
    for r in rows.itertuples(index=False):
        tasks.append(
            {
                "data": {
                    "image": "/data/local-files/?d=" + quote(str(r.path)),
                    "path": str(r.path),
                    "given_label": str(r.given),
                    "labelfix_action": str(r.action),
                    "labelfix_ambiguity": float(r.ambiguity),
                },
                "predictions": [
                    {
                        "model_version": f"labelfix-{version}",
                        "score": float(r.score),
                        "result": [
                            {
                                "from_name": "label",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [str(r.suggested)]},
                            }
                        ],
                    }
                ],
            }
        )
    return tasks


def label_studio_config(class_names: list[str]) -> str:
    """The labeling config (XML) the tasks' predictions refer to: one choice per class."""
    choices = "\n".join(f'    <Choice value="{html.escape(str(c), quote=True)}"/>' for c in class_names)
    return (
        '<View>\n  <Image name="image" value="$image"/>\n  <Text name="given" value="given: $given_label"/>\n'
        f'  <Choices name="label" toName="image" choice="single" showInline="true">\n{choices}\n  </Choices>\n</View>\n'
    )
