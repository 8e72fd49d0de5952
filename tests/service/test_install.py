"""Everything the code loads at run time is inside the wheel (``nox -s wheel`` proves it
end to end; this catches a new kind of data file early)."""

from __future__ import annotations

import fnmatch
import tomllib

from tests.conftest import ROOT

PACKAGES = ("console", "relay", "harness", "fixtures")
NOT_RUNTIME = {".gitattributes"}


def test_package_data_covers_every_data_file_of_the_packages() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns: dict[str, list[str]] = config["package-data"]
    missing = []
    for package in PACKAGES:
        base = ROOT / package
        for path in base.rglob("*"):
            if not path.is_file() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts or path.name in NOT_RUNTIME:
                continue
            relative = path.relative_to(base).as_posix()
            # setuptools' "**/" also matches files at the package's top level.
            if not any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(relative, p.removeprefix("**/")) for p in patterns.get(package, [])):
                missing.append(f"{package}/{relative}")
    assert missing == [], f"not in [tool.setuptools.package-data]: {missing}"
