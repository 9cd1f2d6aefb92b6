"""The hub as its users get it: a wheel built from this tree, installed into a fresh virtualenv.

The wheel is built from a clean copy of the tree (no ``build/`` left over from an earlier build,
no virtualenv), then installed with pip's ordinary resolver; nothing of the checkout is on the
installed hub's path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "var", "node_modules", "__pycache__", "*.egg-info",
    "test-artifacts", ".env", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
)


@dataclass(frozen=True)
class InstalledHub:
    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **variables: str) -> dict[str, str]:
        """An environment with the venv first on PATH and nothing of the checkout: no
        ``PYTHONPATH``, no ``HUB_`` variable from outside."""
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("HUB_", "PROMETHEUS_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return {**base, "PATH": f"{self.bin}{os.pathsep}{base.get('PATH', '')}", **variables}


def build_and_install(workdir: Path) -> InstalledHub:
    source = workdir / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    wheels = workdir / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("agent_hub-*.whl")
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return InstalledHub(wheel, venv)
