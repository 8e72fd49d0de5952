#!/usr/bin/env python3
"""Set up a local virtual environment and run smtpplus from this checkout.

    python3 dev.py demo        # install (first time) and open the demo console
    python3 dev.py test        # install (first time) and run the whole test suite
    python3 dev.py smtpplus …  # any smtpplus command from the checkout's venv

Needs only Python >= 3.11. The venv lives in .venv/ and is refreshed whenever
pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".smtpplus-installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 — dev.py must explain itself on an old Python
        sys.exit(f"dev.py: Python >= 3.11 is required (this is {sys.version.split()[0]})")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv …", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing smtpplus and its test tools into .venv …", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def run(argv: list[str]) -> int:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # The tests start hundreds of smtpplus processes, each a new interpreter: without
    # bytecode caches each compiles the whole package again, about half of a CLI
    # call's start. Where the environment turns caches off (PYTHONDONTWRITEBYTECODE,
    # often set to keep source trees clean), keep them in .venv/pycache instead.
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None and not env.get("PYTHONPYCACHEPREFIX"):
        env["PYTHONPYCACHEPREFIX"] = str(VENV / "pycache")
    return subprocess.run(argv, cwd=ROOT, env=env).returncode


def main() -> int:
    args = sys.argv[1:]
    if not args or args[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    ensure_venv()
    command, rest = args[0], args[1:]
    if command == "demo":
        return run([str(BIN / "smtpplus"), "demo", *rest])
    if command == "test":
        # Exit code 5 (no tests collected) is non-zero and so fails, as it must.
        return run([str(BIN / "python"), "-m", "pytest", "-n", "2", *rest])
    if command == "smtpplus":
        return run([str(BIN / "smtpplus"), *rest])
    if command == "nox":
        return run([str(BIN / "nox"), *rest])
    print(f"dev.py: unknown command {command!r} — use demo, test, smtpplus or nox", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
