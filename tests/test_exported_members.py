"""The package's Python surface is deliberate: adding to it is a decision, so a test names it."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import gateway


def test_the_package_exports_exactly_its_version() -> None:
    # A fresh interpreter: in this one, other tests' imports have bound subpackages as attributes.
    names = subprocess.run(
        [sys.executable, "-c", "import gateway, json; print(json.dumps(sorted(dir(gateway))))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    public = {name for name in json.loads(names) if not name.startswith("_")}
    assert public == set()  # nothing public beyond __all__, whose one name is a dunder
    assert gateway.__all__ == ["__version__"]
    assert gateway.__version__ == version("mcp-identity-gateway")
