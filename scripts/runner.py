"""What the measuring scripts share: run a facetrip command as a user would, logged and timed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw"
FACETRIP = [sys.executable, "-m", "facetrip"]


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` in the checkout with its output in ``log``; its wall seconds. A failure
    stops the script, naming the log."""
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if code:
        sys.exit(f"{' '.join(cmd)} exited {code}: see {log}")
    return time.perf_counter() - start
