"""Shared fixtures for the Python tests: where the built executables are."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def keyhold_bin() -> str:
    """Path of the built `keyhold` (KEYHOLD_BIN_DIR, else .build/debug)."""
    folder = os.environ.get("KEYHOLD_BIN_DIR", str(ROOT / ".build" / "debug"))
    path = os.path.join(folder, "keyhold")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built; run 'make test' (it builds first)")
    return path
