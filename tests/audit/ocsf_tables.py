"""Derive the OCSF validation tables (tests/audit/ocsf_1_8_0.json) from the OCSF schema repository.

    python tests/audit/ocsf_tables.py GIT_DIR 1.8.0 > tests/audit/ocsf_1_8_0.json

GIT_DIR is a clone of https://github.com/ocsf/ocsf-schema (a bare one will do); only the
schema's JSON files at the tag are read. The tables are data: for each event class the
export emits, its uid, category, activity ids, required attributes, constraints and every
attribute it may carry (the class, the classes it extends, and the profiles they include),
each with its type (and, for an enum, its values and their captions); the same for the
objects the export emits.
The test validates every exported line against them, offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

CLASSES = {
    "base_event": "events/base_event.json",
    "api_activity": "events/application/api_activity.json",
    "authentication": "events/iam/authentication.json",
    "account_change": "events/iam/account_change.json",
    "detection_finding": "events/findings/detection_finding.json",
}
PARENTS = {
    "base_event": "events/base_event.json",
    "application": "events/application/application.json",
    "iam": "events/iam/iam.json",
    "finding": "events/findings/finding.json",
}
OBJECTS = [
    "actor",
    "user",
    "session",
    "api",
    "service",
    "network_endpoint",
    "metadata",
    "product",
    "finding_info",
    "authorization",
    "policy",
    "organization",
    "resource_details",
]
_COMPUTED = {"class_uid", "category_uid"}  # the schema lists only 0 here; the class's own uids are its values
PRIMITIVES = {
    "string_t": "string",
    "integer_t": "integer",
    "long_t": "integer",
    "float_t": "number",
    "boolean_t": "boolean",
    "json_t": "json",
    "object": "object",
}


def _merge(inherited: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """An attribute refined by a subclass: its keys win, its enum values are added to the inherited ones."""
    merged = {**inherited, **own}
    if "enum" in inherited and "enum" in own:
        merged["enum"] = {**inherited["enum"], **own["enum"]}
    return merged


class Schema:
    def __init__(self, git_dir: str, tag: str) -> None:
        self.git_dir, self.tag = git_dir, tag
        dictionary = self.read("dictionary.json")
        self.dictionary: dict[str, Any] = dictionary["attributes"]
        self.types: dict[str, Any] = dictionary["types"]["attributes"]
        self.categories = self.read("categories.json")["attributes"]

    def read(self, path: str) -> Any:
        out = subprocess.run(
            ["git", "--git-dir", self.git_dir, "show", f"{self.tag}:{path}"], capture_output=True, check=True
        ).stdout
        return json.loads(out)

    def primitive(self, name: str) -> str:
        while name in self.types and self.types[name].get("type"):
            name = self.types[name]["type"]
        return PRIMITIVES.get(name, name)

    def merged(self, definition: dict[str, Any], parent_path: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Attributes (parent first, then included profiles, then own), and the constraints that apply."""
        attributes: dict[str, Any] = {}
        constraints: dict[str, Any] = {}
        parent = definition.get("extends")
        if parent and parent_path(parent):
            attributes, constraints = self.merged(self.read(parent_path(parent)), parent_path)
        own = dict(definition.get("attributes", {}))
        for include in own.pop("$include", []):
            profile = self.read(include)
            for name, attr in profile["attributes"].items():  # bound to the profile unless the class says null
                attributes[name] = _merge(attributes.get(name, {}), {"profile": profile["name"], **attr})
        for name, attr in own.items():
            attributes[name] = _merge(attributes.get(name, {}), attr)
        constraints.update(definition.get("constraints", {}))
        return attributes, constraints

    def table(self, attributes: dict[str, Any], constraints: dict[str, Any]) -> dict[str, Any]:
        described: dict[str, Any] = {}
        for name, attr in sorted(attributes.items()):
            entry = self.dictionary[name]
            kind = entry.get("type", "object")
            enum = {**entry.get("enum", {}), **attr.get("enum", {})}  # the dictionary's, refined by the class
            described[name] = {
                "type": self.primitive(kind),
                "array": bool(entry.get("is_array")),
                **({"profile": attr["profile"]} if attr.get("profile") else {}),
                **({"required": True} if attr.get("requirement") == "required" else {}),
                **(
                    {"enum": {k: enum[k]["caption"] for k in sorted(enum, key=int)}}
                    if enum and self.primitive(kind) == "integer" and name not in _COMPUTED
                    else {}
                ),
            }
        return {
            # required unless bound to a profile the event does not apply (metadata.profiles)
            "required": sorted(
                n for n, a in attributes.items() if a.get("requirement") == "required" and not a.get("profile")
            ),
            "at_least_one": constraints.get("at_least_one", []),
            "attributes": described,
        }

    def event_class(self, path: str) -> dict[str, Any]:
        definition = self.read(path)
        attributes, constraints = self.merged(definition, PARENTS.get)
        category = definition.get("category")
        parent = definition.get("extends")
        while category is None and parent:
            parent_definition = self.read(PARENTS[parent])
            category, parent = parent_definition.get("category"), parent_definition.get("extends")
        category_uid = self.categories[category]["uid"] if category in self.categories else 0
        uid = definition.get("uid", 0)
        return {
            "caption": definition["caption"],
            "category_name": self.categories[category]["caption"] if category in self.categories else "Other",
            "category_uid": category_uid,
            "class_uid": category_uid * 1000 + uid if uid else 0,
            **self.table(attributes, constraints),
        }

    def object_table(self, name: str) -> dict[str, Any]:
        attributes, constraints = self.merged(self.read(f"objects/{name}.json"), lambda n: f"objects/{n}.json")
        return self.table(attributes, constraints)


def main(git_dir: str, tag: str) -> None:
    schema = Schema(git_dir, tag)
    tables = {
        "_source": f"derived by tests/audit/ocsf_tables.py from https://github.com/ocsf/ocsf-schema at tag {tag}",
        "version": schema.read("version.json")["version"],
        "classes": {name: schema.event_class(path) for name, path in CLASSES.items()},
        "objects": {name: schema.object_table(name) for name in OBJECTS},
    }
    sys.stdout.write(_compact(tables) + "\n")


def _compact(value: Any, depth: int = 0) -> str:
    """Nested objects one key a line down to the attributes, each attribute's description on one line."""
    if not isinstance(value, dict) or depth > 3 or not value or "array" in value:
        return json.dumps(value, sort_keys=True)
    pad = " " * (depth + 1)
    items = [f"{pad}{json.dumps(key)}: {_compact(value[key], depth + 1)}" for key in sorted(value)]
    return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"


if __name__ == "__main__":
    main(*sys.argv[1:3])
