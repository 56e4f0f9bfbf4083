"""The CI gate that fails only on new problems: compare a scan with a baseline scan.

Rows are matched by path, and (image runs) by the decoded image's content hash when the path
changed (a renamed or moved file is the same image). An issue is identified by its row and its
given label: an issue whose row and label both match a baseline issue is *unchanged*; one
without is *new* (a new row, a changed label, or a row the baseline did not flag); a baseline
issue whose row is still there without the issue is *fixed* (flag gone or label changed); one
whose row is gone is *removed* (deleting a row does not fix it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from labelfix.errors import InputError, RunDirError

COLUMNS = ("path", "given_label", "is_issue", "issue_score", "suggested_label")


@dataclass(frozen=True)
class BaselineDiff:
    baseline: str
    new: pd.DataFrame  # rows of the current scan: path, given_label, suggested_label, issue_score
    fixed: pd.DataFrame  # rows of the baseline
    unchanged: int
    removed: int
    matched_rows: int
    matched_by_hash: int
    rows: int
    baseline_rows: int
    warnings: list[str] = field(default_factory=list)

    def report(self, top: int = 20) -> dict:
        return {
            "baseline": self.baseline,
            "new_issues": int(len(self.new)),
            "fixed_issues": int(len(self.fixed)),
            "removed_issues": self.removed,
            "unchanged_issues": self.unchanged,
            "rows_matched": self.matched_rows,
            "rows_matched_by_content": self.matched_by_hash,
            "rows": self.rows,
            "baseline_rows": self.baseline_rows,
            "new": self.new.head(top).to_dict("records"),
        }


def read_baseline(path: Path) -> tuple[pd.DataFrame, str]:
    """The baseline's scan table, from a run directory or its scan.parquet."""
    from labelfix.files.rundir import SCAN, RunDir

    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        summary = run.load_summary()
        df, _ = run.load_scan(summary)
        return df, str(path / SCAN)
    if not path.is_file():
        raise InputError(f"--baseline {path}: not found (give a run directory or its scan.parquet)")
    from labelfix.files.outputs import read_parquet

    try:
        df, _ = read_parquet(path)
    except RunDirError:
        raise
    except Exception as exc:
        raise InputError(f"--baseline {path}: not a labelfix scan.parquet ({type(exc).__name__})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"--baseline {path}: column {missing[0]!r} missing; not a labelfix scan.parquet")
    return df, str(path)


def _match(current: pd.DataFrame, base: pd.DataFrame) -> tuple[np.ndarray, int]:
    """For each current row, the index of its baseline row (-1: none), and how many matched by
    content hash only."""
    by_path = pd.Series(np.arange(len(base)), index=base["path"].astype(str).to_numpy())
    by_path = by_path[~by_path.index.duplicated()]
    match = by_path.reindex(current["path"].astype(str).to_numpy()).fillna(-1).to_numpy().astype(np.int64)
    by_hash = 0
    if "content_sha256" in current.columns and "content_sha256" in base.columns:
        taken = np.zeros(len(base), dtype=bool)
        taken[match[match >= 0]] = True
        free = base.loc[~taken, "content_sha256"].dropna()
        free = free[free != ""]
        hashes = pd.Series(free.index.to_numpy(), index=free.to_numpy())
        hashes = hashes[~hashes.index.duplicated()]
        todo = np.flatnonzero(match < 0)
        found = hashes.reindex(current["content_sha256"].to_numpy()[todo]).fillna(-1).to_numpy().astype(np.int64)
        # a baseline row is matched once
        found[pd.Series(found).duplicated().to_numpy() & (found >= 0)] = -1
        match[todo] = found
        by_hash = int((found >= 0).sum())
    return match, by_hash


def diff_against(current: pd.DataFrame, base: pd.DataFrame, name: str) -> BaselineDiff:
    """New, fixed and unchanged issues of `current` (a scan table) against the baseline scan
    table `base` (read_baseline) read from `name`."""
    match, by_hash = _match(current, base)
    cur_issue = current["is_issue"].to_numpy().astype(bool)
    base_issue = base["is_issue"].to_numpy().astype(bool)
    cur_label = current["given_label"].astype(str).to_numpy()
    base_label = base["given_label"].astype(str).to_numpy()
    has = match >= 0
    same_label = np.zeros(len(current), dtype=bool)
    same_label[has] = base_label[match[has]] == cur_label[has]
    was_issue = np.zeros(len(current), dtype=bool)
    was_issue[has] = base_issue[match[has]]
    unchanged = cur_issue & same_label & was_issue
    new = cur_issue & ~unchanged
    still = np.zeros(len(base), dtype=bool)
    still[match[unchanged]] = True
    present = np.zeros(len(base), dtype=bool)
    present[match[has]] = True
    fixed = base_issue & ~still & present
    removed = int((base_issue & ~present).sum())
    cols = ["path", "given_label", "suggested_label", "issue_score"]
    new_rows = current.loc[new, cols].sort_values("issue_score", ascending=False).reset_index(drop=True)
    fixed_rows = base.loc[fixed, cols].reset_index(drop=True)
    warnings = []
    if has.sum() == 0 and len(current):
        warnings.append(f"--baseline {name}: no row matched by path or content; every issue counts as new")
    return BaselineDiff(
        name,
        new_rows,
        fixed_rows,
        int(unchanged.sum()),
        removed,
        int(has.sum()),
        by_hash,
        len(current),
        len(base),
        warnings,
    )


def summary_markdown(summary: dict, diff: BaselineDiff | None, top: int = 20) -> str:
    """A short Markdown summary of a scan (for $GITHUB_STEP_SUMMARY)."""
    counts = summary["counts"]
    lines = [
        "## labelfix scan",
        "",
        f"- rows: {counts['samples']}, classes: {counts['classes']}",
        f"- label issues: {counts['issues']} ({summary.get('flagged_share', 0):.1%} of rows)",
        f"- estimated share of wrong labels: {summary.get('estimated_noise_rate', 0):.1%}",
    ]
    dup = summary.get("duplicates") or {}
    if "groups" in dup:
        lines.append(f"- duplicate groups: {dup['groups']} ({dup['conflicting_groups']} with conflicting labels)")
    for w in summary.get("warnings", []):
        lines.append(f"- warning: {w}")
    if diff is not None:
        lines += [
            "",
            f"### Against the baseline `{diff.baseline}`",
            "",
            f"**{len(diff.new)} new**, {len(diff.fixed)} fixed, {diff.unchanged} unchanged, "
            f"{diff.removed} removed with their rows "
            f"({diff.matched_rows} of {diff.rows} rows matched, {diff.matched_by_hash} by content).",
        ]
        if len(diff.new):
            lines += ["", "| path | given | suggested | score |", "|---|---|---|---|"]
            for r in diff.new.head(top).itertuples():
                lines.append(
                    f"| `{_md(r.path)}` | {_md(r.given_label)} | {_md(r.suggested_label)} | {r.issue_score:.3f} |"
                )
            if len(diff.new) > top:
                lines.append(f"| ... {len(diff.new) - top} more | | | |")
    return "\n".join(lines) + "\n"


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("`", "'")
