#!/usr/bin/env python3
"""Bootstrap and run the project with nothing but python3.

    python3 dev.py demo    # the sandbox, the daemon, a few posts, the status table
    python3 dev.py test    # lint, types and the whole test suite (what CI runs)

Both create ./.venv on first use and install the package into it (editable, with the dev
extra); later runs reuse it and reinstall only when pyproject.toml has changed.
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
BIN = VENV / "bin"
STAMP = VENV / ".installed-from"


def ensure_venv() -> None:
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    print("dev.py: installing orchestrator and its dependencies into .venv", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "--editable", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(digest)


def run(*argv: str) -> int:
    print("$", " ".join(argv), flush=True)
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    ensure_venv()
    if argv[0] == "demo":
        os.execv(BIN / "orchestrator", ["orchestrator", "demo", *argv[1:]])
    for step in (
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("mypy",),
    ):
        if run(*step) != 0:
            return 1
    return run("pytest", *argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
