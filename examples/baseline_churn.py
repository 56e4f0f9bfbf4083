"""How much the baseline gate's result moves when the auto teacher retrains (README, "Gating CI on
new label issues"): 1,000 scikit-learn digits with 20% symmetric noise are scanned; scanned
again into a fresh folder against that baseline (same inputs: the teacher retrains from the same
seed); and scanned with 5 clean labels changed. Prints new / fixed / unchanged issues.

    OMP_NUM_THREADS=1 .venv/bin/python examples/baseline_churn.py [--work /tmp/labelfix-churn]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/labelfix-churn"))
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from labelfix.commands.demo import write_digits_folder

    shutil.rmtree(args.work, ignore_errors=True)
    root = args.work / "data"
    csv, y, noisy = write_digits_folder(root, 0.2, 0, n=args.n)
    env = dict(os.environ, LABELFIX_PROGRESS="none")

    def scan(labels: Path, out: str, base: str | None = None) -> dict:
        cmd = [sys.executable, "-m", "labelfix.cli", "scan", str(root / "images"), "--labels", str(labels)]
        cmd += ["--out", str(args.work / out), "--json"] + (["--baseline", str(args.work / base)] if base else [])
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            sys.exit(p.stderr)
        return json.loads(p.stdout)

    s0 = scan(csv, "base")
    s1 = scan(csv, "same", "base")["baseline"]
    print(f"same inputs, fresh folder: {s1['new_issues']} new, {s1['fixed_issues']} fixed of {s0['counts']['issues']}")
    rows = np.flatnonzero(noisy == y)[:5]
    g = noisy.copy()
    g[rows] = (g[rows] + 3) % 10
    changed = root / "labels5.csv"
    changed.write_text("path,label\n" + "".join(f"digit_{i:04d}.png,{v}\n" for i, v in enumerate(g)))
    s2 = scan(changed, "five", "base")["baseline"]
    hit = {r["path"] for r in s2["new"]} & {f"digit_{i:04d}.png" for i in rows}
    print(
        f"5 changed labels: {s2['new_issues']} new ({len(hit)} of them the changed rows), "
        f"{s2['fixed_issues']} fixed, {s2['unchanged_issues']} unchanged of {s0['counts']['issues']}"
    )


if __name__ == "__main__":
    main()
