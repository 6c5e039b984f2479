"""The audit events a user can rely on are exactly the ones the contract lists."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.audit.events import Event

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"


def test_every_event_the_gateway_can_emit_is_in_the_contracts_list_and_nothing_else() -> None:
    text = DESIGN.read_text()
    listed = text[text.index("The events (all named in") : text.index("Every admission (the record before forwarding)")]
    documented = set(re.findall(r"`([a-z]+\.[a-z_]+)`", listed))
    assert documented == {e.value for e in Event}
