"""``secchat demo`` -- the README's first command -- runs, succeeds and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.directory_support import SRC


def test_demo_runs_end_to_end_and_cleans_up(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "120"}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-c", "from secchat.app.cli import main; main()", "demo", "--n", "3"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fingerprints all equal" in proc.stdout
    assert "caught up" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert list(Path(tmp_path).iterdir()) == [], "the demo left files behind"


def test_demo_through_the_relay_only_with_a_member_away_and_back(tmp_path):
    from tests.nats_support import require_nats

    require_nats()
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "120"}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-c", "from secchat.app.cli import main; main()", "demo", "--n", "5",
         "--relay", "--timeout", "90"],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "members publish no address" in proc.stdout
    assert "fingerprints all equal" in proc.stdout
    assert "caught up on 3 messages said while away" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert list(Path(tmp_path).iterdir()) == [], "the demo left files behind"
