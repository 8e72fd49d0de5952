"""Architecture boundaries that keep the project easy to change."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_relay_never_imports_textual_or_console() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & {"textual", "console"})
        for path in (ROOT / "relay").rglob("*.py")
        if _imports(path) & {"textual", "console"}
    }
    assert offenders == {}


def test_nothing_in_the_product_imports_smtplib() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("relay", "harness", "console")
        for path in (ROOT / package).rglob("*.py")
        if "smtplib" in _imports(path)
    ]
    assert offenders == []


def test_sql_lives_only_in_the_store_package() -> None:
    offenders = []
    for package in ("relay", "harness", "console"):
        for path in (ROOT / package).rglob("*.py"):
            if "relay/store" in path.as_posix():
                continue
            text = path.read_text()
            if any(kw in text for kw in ("SELECT ", "INSERT INTO", "UPDATE messages", "DELETE FROM", ".execute(\"")):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_cli_help_and_store_commands_do_not_import_textual() -> None:
    code = (
        "import sys\n"
        "from console.cli import main\n"
        "try:\n"
        "    main(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('textual' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
