"""Architecture boundaries that keep the project easy to change."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


PRODUCT = ("relay", "console", "harness")
SQLITE_BACKEND = "relay/store/sqlite/"  # the one package that may know the store is SQLite


def _python_files(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


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


# The operators' operations go through relay.admin (one implementation, shared by CLI,
# console, demo, harness and benches): screens and commands never reach the password
# functions, nor the store's writes those operations wrap. Reading from the store is fine.
_ADMIN_ONLY: dict[str, set[str] | None] = {  # module -> names only relay.admin may use (None: all)
    "relay.passwords": None,
    "relay.store.directory": {"create_user", "set_password_hash", "import_member_stream"},
    "relay.store.verification": {"queue_code", "confirm_code", "record_dns_check", "approve"},
    "relay.store.campaigns": {"insert_campaign"},
}


def _admin_bypasses(path: Path) -> list[str]:
    """Where ``path`` uses what :data:`_ADMIN_ONLY` keeps for relay.admin."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bound: dict[str, str] = {}  # local name -> guarded module it stands for
    found: list[str] = []

    def guarded(module: str, name: str) -> bool:
        names = _ADMIN_ONLY[module]
        return names is None or name in names

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in _ADMIN_ONLY:
                    if _ADMIN_ONLY[alias.name] is None:
                        found.append(f"import {alias.name}")
                    elif alias.asname:
                        bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if node.module in _ADMIN_ONLY and guarded(node.module, alias.name):
                    found.append(f"from {node.module} import {alias.name}")
                elif f"{node.module}.{alias.name}" in _ADMIN_ONLY:
                    module = f"{node.module}.{alias.name}"
                    if _ADMIN_ONLY[module] is None:
                        found.append(f"from {node.module} import {alias.name}")
                    else:
                        bound[alias.asname or alias.name] = module
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and guarded(bound[node.value.id], node.attr)
        ):
            found.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
    return found


def test_screens_and_commands_run_operator_operations_only_through_admin() -> None:
    offenders = {
        str(path.relative_to(ROOT)): _admin_bypasses(path)
        for folder in ("console/screens", "console/cli")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if _admin_bypasses(path)
    }
    assert offenders == {}


def test_the_admin_rule_catches_each_way_around_it(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from relay import passwords\n"
        "import relay.passwords\n"
        "from relay.store.directory import create_user, get_user\n"
        "from relay.store import directory as d\n"
        "d.set_password_hash(None, 'u', 'h')\n"
        "d.get_user(None, 'u')\n"
        "from relay.store import verification\n"
        "verification.sender_views(None)\n"
        "verification.record_dns_check(None, 'a', None)\n"
        "import relay.store.campaigns as c\n"
        "c.insert_campaign(None)\n"
        "c.list_campaigns(None)\n"
    )
    assert sorted(_admin_bypasses(sample)) == sorted([
        "from relay import passwords",
        "import relay.passwords",
        "from relay.store.directory import create_user",
        "d.set_password_hash (line 5)",
        "verification.record_dns_check (line 9)",
        "c.insert_campaign (line 11)",
    ])


def test_only_the_sqlite_backend_imports_sqlite3() -> None:
    """Everything else, the store's operation modules included, names
    ``relay.store.Connection`` and catches the store's own errors, so a second backend
    adds a package beside ``relay/store/sqlite/`` and changes nothing else."""
    offenders = [
        _rel(path)
        for path in _python_files(*PRODUCT)
        if not _rel(path).startswith(SQLITE_BACKEND) and "sqlite3" in _imports(path)
    ]
    assert offenders == []


def test_only_the_postgresql_backend_imports_psycopg() -> None:
    """psycopg stays behind relay/store/postgres/: everyone else catches the store's
    own errors, and a SQLite user never loads it."""
    offenders = [
        _rel(path)
        for path in _python_files(*PRODUCT)
        if not _rel(path).startswith("relay/store/postgres/")
        and _imports(path) & {"psycopg", "psycopg_pool"}
    ]
    assert offenders == []


def test_a_sqlite_store_never_loads_psycopg(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from relay.store import AsyncStore, open_store\n"
        f"open_store({str(tmp_path / 'a.db')!r}).close()\n"
        "async def main():\n"
        f"    async with AsyncStore({str(tmp_path / 'a.db')!r}):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('psycopg')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def _catches_sqlite3(node: ast.ExceptHandler) -> bool:
    return node.type is not None and any(
        isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name) and part.value.id == "sqlite3"
        for part in ast.walk(node.type)
    )


def test_only_the_sqlite_backend_catches_sqlite3_errors() -> None:
    offenders = [
        f"{_rel(path)}:{node.lineno}"
        for path in _python_files(*PRODUCT)
        if not _rel(path).startswith(SQLITE_BACKEND)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ExceptHandler) and _catches_sqlite3(node)
    ]
    assert offenders == []


# Private attributes of aiosqlite's Connection that code once reached for; none of them
# is API, any release may change them.
AIOSQLITE_PRIVATE = {"_execute", "_conn", "_connection", "_connector", "_tx", "_running", "_thread"}


def test_no_private_aiosqlite_attributes() -> None:
    offenders = [
        f"{_rel(path)}:{node.lineno} .{node.attr}"
        for path in _python_files(*PRODUCT, "tests")
        if "aiosqlite" in _imports(path)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in AIOSQLITE_PRIVATE
    ]
    assert offenders == []
    # The call the store once relied on, wherever it might come back (self._x is fine).
    reached = [
        f"{_rel(path)}:{node.lineno}"
        for path in _python_files(*PRODUCT)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "_execute"
    ]
    assert reached == []


def _third_party_aliases(tree: ast.Module) -> dict[str, str]:
    """Local names bound to third-party modules: ``import x`` / ``import x as y``."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in PRODUCT:
                    aliases[alias.asname or top] = alias.name
    return aliases


# Known uses, each to be removed when its code is changed (the list may only shrink):
# textual.widgets does not export FooterKey, which the fitted footer subclasses.
PRIVATE_KNOWN = {"console/widgets/footer.py: from textual.widgets._footer import …"}


def test_no_private_names_of_a_dependency() -> None:
    """No ``from dep import _x`` and no ``dep._x`` on a third-party module: what a
    library does not publish may change in any release."""
    offenders = []
    for path in _python_files(*PRODUCT):
        tree = ast.parse(path.read_text())
        modules = _third_party_aliases(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                if top in sys.stdlib_module_names or top in PRODUCT:
                    continue
                if any(part.startswith("_") for part in node.module.split(".")) or any(
                    a.name.startswith("_") and not a.name.startswith("__") for a in node.names
                ):
                    offenders.append(f"{_rel(path)}: from {node.module} import …")
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                offenders.append(f"{_rel(path)}: {node.value.id}.{node.attr}")
    assert sorted(set(offenders) - PRIVATE_KNOWN) == []
    assert sorted(PRIVATE_KNOWN - set(offenders)) == [], "fixed: remove it from PRIVATE_KNOWN"


# SQL or driver API that only SQLite has. The operation modules in relay/store/ are
# shared by every backend (relay/store/connection.py says what they may use); what
# differs goes behind the connection's dialect, in the backend's package.
SQLITE_ONLY_SQL = ("INSERT OR ", "REPLACE INTO", "julianday(", "strftime(", "datetime(", "unixepoch(", "PRAGMA ",
                   "rowid", "IFNULL(", " GLOB ", "zeroblob(", "AUTOINCREMENT", "json_extract(", "temp.")
SQLITE_ONLY_API = {"lastrowid", "total_changes", "blobopen", "executescript", "row_factory", "create_function"}


def _code_strings(tree: ast.Module) -> list[ast.Constant]:
    """String constants that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_the_shared_operation_modules_use_no_sqlite_only_sql_or_api() -> None:
    offenders = []
    for path in sorted((ROOT / "relay/store").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in _code_strings(tree):
            text = node.value.upper()
            offenders += [f"{_rel(path)}:{node.lineno} {word!r}" for word in SQLITE_ONLY_SQL if word.upper() in text]
        offenders += [
            f"{_rel(path)}:{node.lineno} .{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in SQLITE_ONLY_API
        ]
    assert offenders == []
