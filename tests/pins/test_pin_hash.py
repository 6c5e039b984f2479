"""The pin: one canonical hash of what a model reads of a tool; only a real change changes it."""

from __future__ import annotations

import json
import random
from typing import Any

import mcp_types as types
from hypothesis import given
from hypothesis import strategies as st

from gateway.pins.definitions import check, pin

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
schemas = st.dictionaries(st.text(max_size=8), json_values, max_size=5).map(lambda d: {"type": "object", **d})
tools = st.builds(
    dict,
    name=st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True),
    description=st.none() | st.text(max_size=200),
    inputSchema=schemas,
    outputSchema=st.none() | schemas,
    annotations=st.none()
    | st.fixed_dictionaries({}, optional={"readOnlyHint": st.booleans(), "title": st.text(max_size=10)}),
).map(lambda d: {k: v for k, v in d.items() if v is not None})


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


def served(wire: dict[str, Any], **dumps: Any) -> types.Tool:
    """A tool as the gateway receives it: parsed from the server's JSON text."""
    return types.Tool.model_validate_json(json.dumps(wire, **dumps))


@given(tools, st.randoms(use_true_random=False), st.sampled_from([None, 0, 2, "\t"]), st.booleans())
def test_key_order_and_whitespace_never_change_a_pin(wire, rng, indent, ascii_only):
    reference = pin(served(wire))
    again = served(shuffled(wire, rng), indent=indent, ensure_ascii=ascii_only, separators=(", ", " : "))
    assert pin(again) == reference
    assert reference.startswith("sha256:") and len(reference) == 7 + 64


@given(tools, st.text(min_size=1, max_size=30))
def test_any_change_to_the_description_changes_the_pin(wire, extra):
    changed = {**wire, "description": (wire.get("description") or "") + extra}
    assert pin(served(changed)) != pin(served(wire))


@given(tools, st.text(max_size=8), json_values)
def test_any_change_to_a_schema_changes_the_pin(wire, key, value):
    for field in ("inputSchema", "outputSchema"):
        schema = wire.get(field) or {"type": "object"}
        if schema.get(key, object()) == value:
            continue
        assert pin(served({**wire, field: {**schema, key: value}})) != pin(served(wire))


@given(tools)
def test_the_name_the_title_and_the_annotations_are_pinned_too(wire):
    reference = pin(served(wire))
    assert pin(served({**wire, "name": wire["name"] + "x"})) != reference
    assert pin(served({**wire, "title": "Another title"})) != reference
    annotations = wire.get("annotations") or {}
    flipped = {**annotations, "destructiveHint": not annotations.get("destructiveHint", False)}
    assert pin(served({**wire, "annotations": flipped})) != reference


def test_fields_outside_the_definition_do_not_change_the_pin():
    wire = {"name": "t", "description": "d", "inputSchema": {"type": "object"}}
    assert pin(served({**wire, "_meta": {"x": 1}, "icons": []})) == pin(served(wire))


def test_check_hides_changed_pinned_tools_and_with_require_pins_the_unpinned_ones():
    a, b, c = (types.Tool(name=n, description=n, input_schema={"type": "object"}) for n in "abc")
    listed = {"a": a, "b": b, "c": c}
    pins = {"a": pin(a), "b": pin(c)}
    hidden, changes = check(listed, pins, require_pins=False)
    assert hidden == {"b"} and [(x.tool, x.pinned, x.served) for x in changes] == [("b", pin(c), pin(b))]
    hidden, _ = check(listed, pins, require_pins=True)
    assert hidden == {"b", "c"}
