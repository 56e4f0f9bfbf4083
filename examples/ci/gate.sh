#!/usr/bin/env bash
# The label-quality gate that examples/ci/label-quality.yml runs (and tests/test_ci_example.py runs
# on a tiny synthetic set). Inputs, all paths:
#   LABELS      the labels CSV (path,label)
#   PRED_PROBS  out-of-sample probabilities of a model you trust (.npy, rows follow the CSV)
#   BASELINE    the accepted run: a scan.parquet committed to the repository (or a run folder)
#   OUT         where this run goes (uploaded as an artifact)
#   SUMMARY     Markdown summary file (in GitHub Actions: $GITHUB_STEP_SUMMARY)
#   ALLOWED_NEW how many new label issues the gate lets through (default 0)
# Exit codes: 0 pass, 11 more new issues than allowed, 12 warnings under --strict, 2/4/5 bad input.
set -euo pipefail
labelfix scan \
  --labels "$LABELS" \
  --pred-probs "$PRED_PROBS" \
  --out "$OUT" \
  --baseline "$BASELINE" \
  --fail-on-new "${ALLOWED_NEW:-0}" \
  --summary-md "$SUMMARY" \
  --strict \
  --report
