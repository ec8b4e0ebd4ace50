"""What users look up about the installed package: its version (one source, the same as the
metadata pip shows) and its licence, shipped inside the wheel."""

from __future__ import annotations

import importlib.metadata

import linux_clone


def test_version_is_the_metadata_version() -> None:
    assert linux_clone.__version__ == importlib.metadata.version("linux_clone")


def test_license_is_installed_with_the_package() -> None:
    files = importlib.metadata.files("linux_clone") or []
    licences = [f for f in files if f.name == "LICENSE"]
    assert licences, "no LICENSE in the installed distribution"
    assert "MIT License" in licences[0].read_text()


def test_metadata_names_the_licence_and_pythons() -> None:
    meta = importlib.metadata.metadata("linux_clone")
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier") or []
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert "Programming Language :: Python :: 3.9" in classifiers


def test_stubs_are_installed_with_the_package() -> None:
    # The compiled modules' stubs too: without _core.pyi, type checkers of the package's own
    # modules see `from ._core import ...` as untyped.
    files = importlib.metadata.files("linux_clone") or []
    shipped = {f.name for f in files if f.parent.name == "linux_clone"}
    assert {"py.typed", "__init__.pyi", "_core.pyi", "_bench.pyi"} <= shipped, sorted(shipped)
