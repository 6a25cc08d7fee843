"""Node.js for the tests that need it: the AsyncAPI parser and the Node.js reference participant.

On a developer's machine without Node.js (or without a folder's npm
packages) such a test is skipped with a sentence saying what to install;
in CI (CI or SAGA_TEST_PRIVATE=1 set) it fails instead, since `.ci/run`
installs both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE_PAYMENT = ROOT / "participants" / "examples" / "node-payment"
ASYNCAPI_CHECK = ROOT / "tests" / "asyncapi"


def node(folder: Path) -> str:
    """The `node` binary, with `folder`'s npm packages installed; skip (fail in CI) otherwise."""
    binary = shutil.which("node")
    where = folder.relative_to(ROOT)
    if binary is None:
        problem = "this test needs Node.js 18 or newer (apt-get install nodejs npm)"
    elif not (folder / "node_modules").is_dir():
        problem = f"this test needs the npm packages of {where}: run `npm ci` there"
    else:
        return binary
    if os.environ.get("CI") or os.environ.get("SAGA_TEST_PRIVATE") == "1":
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)
