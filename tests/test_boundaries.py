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


# User creation and passwords go through relay.admin (one implementation, shared by
# CLI, console, demo, harness and benches); reading users from the directory is fine.
_PASSWORD_FUNCTIONS = {"create_user", "set_password_hash"}


def _password_bypasses(path: Path) -> list[str]:
    """Where ``path`` reaches relay.passwords, or the directory's user-creation and
    password functions, without going through relay.admin."""
    tree = ast.parse(path.read_text(), filename=str(path))
    directory_names: set[str] = set()  # local names bound to relay.store.directory
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "relay.passwords":
                    found.append(f"import {alias.name}")
                elif alias.name == "relay.store.directory" and alias.asname:
                    directory_names.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if node.module == "relay.passwords" or (node.module == "relay" and alias.name == "passwords"):
                    found.append(f"from {node.module} import {alias.name}")
                elif node.module == "relay.store.directory" and alias.name in _PASSWORD_FUNCTIONS:
                    found.append(f"from {node.module} import {alias.name}")
                elif node.module == "relay.store" and alias.name == "directory":
                    directory_names.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in _PASSWORD_FUNCTIONS
            and isinstance(node.value, ast.Name)
            and node.value.id in directory_names
        ):
            found.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
    return found


def test_screens_and_commands_create_users_and_passwords_only_through_admin() -> None:
    offenders = {
        str(path.relative_to(ROOT)): _password_bypasses(path)
        for folder in ("console/screens", "console/cli")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if _password_bypasses(path)
    }
    assert offenders == {}


def test_the_password_rule_catches_each_way_around_it(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from relay import passwords\n"
        "import relay.passwords\n"
        "from relay.store.directory import create_user, get_user\n"
        "from relay.store import directory as d\n"
        "d.set_password_hash(None, 'u', 'h')\n"
        "d.get_user(None, 'u')\n"
    )
    assert _password_bypasses(sample) == [
        "from relay import passwords",
        "import relay.passwords",
        "from relay.store.directory import create_user",
        "d.set_password_hash (line 5)",
    ]
