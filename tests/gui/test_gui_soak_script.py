"""bench/gui_soak.py runs end to end: a few seconds of GUI training sampled, stopped from the Stop action, the window
closed with every thread joined, and a JSON whose verdict matches the exit code. (The soak's numbers belong to
bench/README.md, not to a test.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKS = {"RSS growth <= 50 MB", "no Python thread growth", "no OS thread growth", "Stop answered",
          "every thread joined at close", "the Embeddings view followed the run"}


@pytest.mark.slow
def test_soak_script_samples_stops_and_closes(tmp_path):
    out = tmp_path / "soak.json"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}  # WORKBENCH_CACHE_DIR: the test's own (conftest)
    command = [sys.executable, str(REPO / "bench" / "gui_soak.py"), "--minutes", "0.15", "--sample-s", "2",
               "--warmup-minutes", "0.03", "--val-interval", "5", "--val-episodes", "5", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert out.is_file(), result.stderr[-3000:]
    data = json.loads(out.read_text())
    summary, samples = data["summary"], data["samples"]

    labels = [s["label"] for s in samples]
    for label in ("before training", "warm-up end", "end", "after stop", "after close"):
        assert label in labels
    assert "step " in result.stderr  # progress lines for a background run
    end = next(s for s in samples if s["label"] == "end")
    assert end["steps"] > 0 and end["rss_mb"] > 0 and end["fds"] > 0 and end["os_threads"] >= 2
    assert end["tab"] == "Embeddings" and end["runs"] == 1
    closing = summary["closing"]
    assert closing["stop_answer_s"] is not None and closing["event"] == "stopped"
    assert closing["shutdown_ok"] and not closing["job_threads_left"]
    closed = next(s for s in samples if s["label"] == "after close")
    assert "training-job" not in closed["thread_names"]  # the training thread was joined
    assert closed["os_threads"] < end["os_threads"]
    assert set(summary["checks"]) == CHECKS
    assert summary["passed"] == all(summary["checks"].values())
    assert result.returncode == (0 if summary["passed"] else 1), result.stderr[-3000:]
