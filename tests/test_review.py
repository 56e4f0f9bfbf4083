"""review.csv and the Label Studio export that refine writes (issue 12, part 4)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
from conftest import write_csv

import labelfix


def test_review_csv_and_label_studio_tasks(tmp_path):
    rng = np.random.default_rng(2)
    n, c = 300, 3
    true = rng.integers(0, c, n)
    given = np.where(rng.random(n) < 0.2, (true + 1) % c, true)
    logits = rng.normal(0, 0.6, (n, c))
    logits[np.arange(n), true] += 3
    np.save(tmp_path / "p.npy", (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32))
    names = ["b<i>rd", "cat & dog", "fish"]  # sorted: the CSV's classes in column order
    write_csv(tmp_path / "l.csv", ("path", "label"), [(f"a b/{i}.png", names[g]) for i, g in enumerate(given)])
    labelfix.scan(labels_csv=tmp_path / "l.csv", pred_probs=tmp_path / "p.npy", out=tmp_path / "run")
    labelfix.refine(tmp_path / "run")
    run = tmp_path / "run"
    review = pd.read_csv(run / "review.csv", keep_default_na=False)
    assert list(review.columns) == ["path", "given", "suggested", "score", "ambiguity", "action"]
    assert (np.diff(review["score"].to_numpy()) <= 0).all()
    refined = pd.read_parquet(run / "refined.parquet")
    relabel = set(refined.loc[refined["action"] == "relabel", "path"])
    assert relabel and relabel <= set(review["path"])
    assert set(review["action"]) <= {"relabel", "review", "keep"}
    wrong = {f"a b/{i}.png" for i in np.flatnonzero(given != true)}
    assert len(wrong & set(review["path"])) >= 0.8 * len(wrong)
    tasks = json.loads((run / "labelstudio.json").read_text())
    assert len(tasks) == len(review)
    t0 = tasks[0]
    assert t0["data"]["path"] == review["path"][0] and t0["data"]["image"].startswith("/data/local-files/?d=a%20b/")
    choice = t0["predictions"][0]["result"][0]
    assert choice["from_name"] == "label" and choice["to_name"] == "image"
    assert choice["value"]["choices"] == [review["suggested"][0]] and review["suggested"][0] in names
    config = ET.fromstring((run / "labelstudio-config.xml").read_text())
    assert [ch.get("value") for ch in config.iter("Choice")] == names
