"""The package's Python surface is deliberate: adding to it is a decision, so a test names it."""

from __future__ import annotations

from importlib.metadata import version

import gateway


def test_the_package_exports_exactly_its_version() -> None:
    exported = {name for name in dir(gateway) if not name.startswith("_")}
    assert gateway.__all__ == ["__version__"]
    assert exported == set(), exported  # nothing public beyond __all__ (whose one name is dunder)
    assert gateway.__version__ == version("mcp-identity-gateway")
