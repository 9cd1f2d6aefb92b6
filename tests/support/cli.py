"""Run ``hubctl`` from the checkout in a clean child process: no ``HUB_`` variable from outside,
no ``.env`` (it runs in ``cwd``), the checkout first on ``PYTHONPATH``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(cwd: Path, *args: str, timeout: float = 60, **variables: str) -> subprocess.CompletedProcess[str]:
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
        **variables,
    }
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd, env=child_env, capture_output=True, text=True, timeout=timeout, check=False,
    )
