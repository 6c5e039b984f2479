"""Audit records as OCSF 1.8 events, for SIEMs: one event per record, nothing dropped.

    tool.call, tool.result, resource.read, prompt.get, tools.listed,
    sampling/elicitation/roots/input requests, model.usage       API Activity (6003)
    session.opened, token.issued, auth.failed, session.closed     Authentication (3002)
    agent.*, session.resumed, key.rotated (operator changes)      Account Change (3001)
    tool.changed (quarantine), budget.exceeded (budget and loop
    stops), budget.threshold, credential.shared_suspected, refresh.reused,
    tool.pinned (closes a quarantine finding)                     Detection Finding (2004)
    anything else (gateway.started, audit.checkpoint, ...)        Base Event (0)

Every event keeps its place in the verified ledger: `metadata.log_name` is the chain
(the gateway instance), `metadata.sequence` its `seq`, `metadata.original_event_uid` its
`hash`, `metadata.uid` is `<gateway>#<seq>`, `metadata.event_code` the gateway's event
name. The acting agent is `actor.user` (type Service); the human it acts for
(`on_behalf_of`) is the session's delegating user: the authenticated `user` of
Authentication events and `unmapped.on_behalf_of` everywhere. The DPoP key a session's token
is bound to (`dpop_jkt`) is its `session.credential_uid`; how the agent got the token
(`credential`: secret, private_key_jwt, workload, id_jag, operator) has no OCSF attribute and
stays in `unmapped.credential`. Record fields OCSF has no attribute for stay under
`unmapped` with their gateway names. Decisions use the
security_control profile (`action_id` Allowed/Denied, `disposition_id`, `authorizations`
naming the grant version).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata as package_metadata
from typing import Any

from gateway.audit.events import Event

OCSF_VERSION = "1.8.0"
PRODUCT = "MCP identity gateway"

try:
    _VERSION = package_metadata.version("mcp-identity-gateway")
except package_metadata.PackageNotFoundError:  # run from a source tree that was never installed
    _VERSION = "0"

# class: (class_uid, caption, category_uid, category caption)
_CLASSES = {
    "api_activity": (6003, "API Activity", 6, "Application Activity"),
    "authentication": (3002, "Authentication", 3, "Identity & Access Management"),
    "account_change": (3001, "Account Change", 3, "Identity & Access Management"),
    "detection_finding": (2004, "Detection Finding", 2, "Findings"),
    "base_event": (0, "Base Event", 0, "Other"),
}
_ACTIVITIES = {
    "api_activity": {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"},
    "authentication": {1: "Logon", 2: "Logoff", 3: "Authentication Ticket", 5: "Service Ticket Renew", 99: "Other"},
    "account_change": {1: "Create", 2: "Enable", 4: "Password Reset", 5: "Disable", 12: "Unlock", 99: "Other"},
    "detection_finding": {1: "Create", 2: "Update", 3: "Close", 99: "Other"},
    "base_event": {99: "Other"},
}
# event: (class, activity_id, MCP method or what the activity is, for activity 99)
_EVENTS: dict[str, tuple[str, int, str]] = {
    Event.TOOL_CALL: ("api_activity", 99, "tools/call"),
    Event.TOOL_RESULT: ("api_activity", 99, "tools/call"),
    Event.RESOURCE_READ: ("api_activity", 2, "resources/read"),
    Event.PROMPT_GET: ("api_activity", 2, "prompts/get"),
    Event.TOOLS_LISTED: ("api_activity", 2, "tools/list"),
    Event.SAMPLING_REQUEST: ("api_activity", 99, "sampling/createMessage"),
    Event.ELICITATION_REQUEST: ("api_activity", 99, "elicitation/create"),
    Event.ROOTS_REQUEST: ("api_activity", 99, "roots/list"),
    Event.INPUT_REQUEST: ("api_activity", 99, "input"),
    Event.MODEL_USAGE: ("api_activity", 1, "/v1/usage"),
    Event.SESSION_OPENED: ("authentication", 1, "session opened"),
    Event.LOGIN_COMPLETED: ("authentication", 1, "sign-in"),
    Event.LOGIN_FAILED: ("authentication", 1, "sign-in"),
    Event.AUTH_FAILED: ("authentication", 1, "bearer token"),
    Event.TOKEN_ISSUED: ("authentication", 3, "token issued"),
    Event.TOKEN_REFRESHED: ("authentication", 5, "token refreshed"),
    Event.SESSION_CLOSED: ("authentication", 2, "session ended"),
    Event.AGENT_CREATED: ("account_change", 1, "agent created"),
    Event.AGENT_ENABLED: ("account_change", 2, "agent enabled"),
    Event.AGENT_DISABLED: ("account_change", 5, "agent disabled"),
    Event.AGENT_SECRET_ROTATED: ("account_change", 4, "agent secret rotated"),
    Event.SESSION_RESUMED: ("account_change", 12, "Resume session"),
    Event.KEY_ROTATED: ("account_change", 99, "Rotate signing key"),
    Event.TOOL_CHANGED: ("detection_finding", 1, "Tool definition changed; tool quarantined"),
    Event.BUDGET_EXCEEDED: ("detection_finding", 1, "Budget exceeded; session stopped"),
    Event.BUDGET_THRESHOLD: ("detection_finding", 1, "Budget threshold reached"),
    Event.CREDENTIAL_SHARED_SUSPECTED: ("detection_finding", 1, "Agent credential used by several clients"),
    Event.REFRESH_REUSED: ("detection_finding", 1, "Refresh token reused; session revoked"),
    Event.TOOL_PINNED: ("detection_finding", 3, "Tool definition pinned by an operator"),
}
_SEVERITIES = {1: "Informational", 2: "Low", 3: "Medium", 4: "High"}
_STATUS = {1: "Success", 2: "Failure"}
_FINDING_STATUS = {1: "New", 4: "Resolved"}
_USER_TYPES = {1: "User", 2: "Admin", 3: "System", 4: "Service"}
_FAILED_OUTCOMES = {"error", "timeout", "tool_error"}

# Record fields every event consumes into OCSF attributes (what a builder reads is also consumed).
_ALWAYS = {"ts", "event", "seq", "hash", "gateway"}


class _Record:
    """The record being translated, remembering which fields found an OCSF home; the rest go to `unmapped`."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.fields = record
        self.used = set(_ALWAYS)

    def get(self, key: str) -> Any:
        self.used.add(key)
        return self.fields.get(key)

    def unmapped(self) -> dict[str, Any]:
        return {k: v for k, v in self.fields.items() if k not in self.used and v is not None}


def to_ocsf(record: dict[str, Any]) -> dict[str, Any]:
    """One audit record as one OCSF 1.8 event (a JSON object)."""
    r = _Record(record)
    event = str(record.get("event", ""))
    kind, activity_id, what = _EVENTS.get(event, ("base_event", 99, event))
    class_uid, caption, category_uid, category = _CLASSES[kind]
    activity = _ACTIVITIES[kind][activity_id]
    if activity_id == 99:
        activity = what
    out: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": caption,
        "category_uid": category_uid,
        "category_name": category,
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{caption}: {activity}",
        "time": _ms(record.get("ts")),
        "message": _message(record),
        "metadata": _metadata(r),
    }
    profiles = _BUILDERS[kind](r, out, what)
    if profiles:
        out["metadata"]["profiles"] = profiles
    out.setdefault("severity_id", 1)
    out["severity"] = _SEVERITIES[out["severity_id"]]
    leftover = r.unmapped()
    if leftover:
        out["unmapped"] = leftover
    return out


def _ms(ts: Any) -> int:
    return int(round(float(ts or 0) * 1000))


def _metadata(r: _Record) -> dict[str, Any]:
    gateway, seq = r.fields.get("gateway"), r.fields.get("seq")
    meta: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {"name": PRODUCT, "vendor_name": "mcp-identity-gateway", "version": _VERSION},
        "log_provider": "mcp-gateway audit",
        "log_name": gateway,
        "uid": f"{gateway}#{seq}",
        "sequence": seq,
        "original_event_uid": r.fields.get("hash"),
        "event_code": r.fields.get("event"),
        "logged_time": _ms(r.fields.get("ts")),
    }
    correlation = r.fields.get("call_id") or r.fields.get("session")
    if correlation:
        meta["correlation_uid"] = correlation  # a call's tool.call and tool.result; else the session's events
    return {k: v for k, v in meta.items() if v is not None}


def _message(record: dict[str, Any]) -> str:
    parts = [str(record.get("event"))]
    target = ".".join(str(record[k]) for k in ("server", "tool") if record.get(k))
    target = target or str(record.get("resource") or record.get("prompt") or "")
    parts += [target] if target else []
    parts += [f"by {record['agent']}"] if record.get("agent") else []
    parts += [f"for {record['on_behalf_of']}"] if record.get("on_behalf_of") else []
    parts += [f"by operator {record['actor']}"] if record.get("actor") else []
    for key in ("decision", "reason", "outcome", "state"):
        if record.get(key):
            parts.append(f"{key}={record[key]}")
    return " ".join(parts)


# ---------------------------------------------------------------- identities


def _user(uid: str, type_id: int, email: str | None = None) -> dict[str, Any]:
    user: dict[str, Any] = {"uid": uid, "name": uid, "type_id": type_id, "type": _USER_TYPES[type_id]}
    if email:
        user["email_addr"] = email
    return user


def _agent(r: _Record) -> dict[str, Any] | None:
    agent = r.get("agent")
    if not agent:
        return None
    user = _user(str(agent), 4)
    cost_center = r.get("cost_center")
    if cost_center:
        user["org"] = {"ou_name": cost_center, "name": cost_center}
    return user


def _human(value: Any) -> dict[str, Any]:
    text = str(value)
    return _user(text, 1, text if "@" in text else None)


def _operator(actor: Any) -> dict[str, Any]:
    return {"user": _user(str(actor), 2)}


def _session(r: _Record) -> dict[str, Any] | None:
    sid = r.get("session")
    if not sid:
        return None
    session: dict[str, Any] = {"uid": sid}
    if r.fields.get("dpop_jkt"):  # the key the session's token is bound to identifies its credential
        session["credential_uid"] = r.get("dpop_jkt")
    if r.fields.get("expires_at") is not None:
        session["expiration_time"] = _ms(r.get("expires_at"))
    return session


def _actor(r: _Record) -> dict[str, Any]:
    """The agent that acted, in its session and client."""
    actor: dict[str, Any] = {}
    agent = _agent(r)
    if agent is not None:
        actor["user"] = agent
    session = _session(r)
    if session is not None:
        actor["session"] = session
    client = r.get("client")
    if client:
        actor["app_name"] = client
    decision = r.fields.get("decision")
    if decision in ("allow", "deny") and r.fields.get("grant"):  # which grant version decided
        actor["authorizations"] = [
            {"decision": decision, "policy": {"uid": r.get("grant"), "name": "grant", "type": "agent grant"}}
        ]
    if not actor.keys() & {"user", "session", "app_name"}:  # no agent named: the gateway itself acted
        actor["invoked_by"] = "mcp-gateway"
    return actor


def _src(r: _Record) -> dict[str, Any]:
    remote = r.get("remote_addr")
    return {"ip": remote} if remote else {"name": "unknown"}


def _decision(r: _Record, out: dict[str, Any], profiles: list[str]) -> None:
    """Allowed/denied by the gateway's policy, budgets or stops: the security_control profile's attributes."""
    decision = r.get("decision")
    if decision not in ("allow", "deny"):
        return
    allowed = decision == "allow"
    out["action_id"], out["action"] = (1, "Allowed") if allowed else (2, "Denied")
    out["disposition_id"], out["disposition"] = (1, "Allowed") if allowed else (2, "Blocked")
    profiles.append("security_control")


def _status(out: dict[str, Any], ok: bool, detail: Any = None) -> None:
    out["status_id"] = 1 if ok else 2
    out["status"] = _STATUS[out["status_id"]]
    if detail:
        out["status_detail"] = str(detail)


# ---------------------------------------------------------------- classes


def _api_activity(r: _Record, out: dict[str, Any], method: str) -> list[str]:
    profiles: list[str] = []
    out["actor"] = _actor(r)
    out["src_endpoint"] = _src(r)
    server, tool = r.get("server"), r.get("tool")
    target = r.get("resource") or r.get("prompt") or r.get("model")
    api: dict[str, Any] = {"operation": method}
    if server:
        api["service"] = {"name": server}
        out["dst_endpoint"] = {"svc_name": server}
    version = r.get("protocol_version")
    if version:
        api["version"] = version
    out["api"] = api
    name = tool or target
    if name:
        out["resources"] = [{"name": f"{server}.{name}" if server and tool else name, "type": _resource_type(r.fields)}]
    _decision(r, out, profiles)
    decision, outcome = r.get("decision"), r.get("outcome")
    if decision == "deny":
        _status(out, False, r.get("reason"))
        out["severity_id"] = 2
    elif outcome in _FAILED_OUTCOMES:
        _status(out, False, outcome)
        out["severity_id"] = 2
    else:
        _status(out, True, r.get("reason"))
    latency = r.get("latency_ms")
    if latency is not None:
        out["duration"] = int(round(float(latency)))
    return profiles


def _resource_type(record: dict[str, Any]) -> str:
    if record.get("resource"):
        return "MCP resource"
    if record.get("prompt"):
        return "MCP prompt"
    if record.get("model"):
        return "model"
    return "MCP tool"


def _authentication(r: _Record, out: dict[str, Any], what: str) -> list[str]:
    # The authenticated subject: the human for a delegated session (the token's sub), else the agent.
    human = r.fields.get("on_behalf_of")  # also kept in unmapped, as in every other event
    agent = _agent(r)
    out["user"] = _human(human) if human else agent or {"name": "unknown", "type_id": 0, "type": "Unknown"}
    actor = r.get("actor")
    out["actor"] = _operator(actor) if actor else _actor(r)
    out["service"] = {"name": "mcp-gateway", "uid": r.fields.get("gateway")}
    out["src_endpoint"] = _src(r)
    session = _session(r)
    if session is not None:
        reason = r.get("reason")
        if reason and r.fields.get("event") == Event.SESSION_CLOSED:
            session["expiration_reason"] = reason
        out["session"] = session
    failed = r.fields.get("event") in (Event.AUTH_FAILED, Event.LOGIN_FAILED)
    _status(out, not failed, r.get("reason") if failed else r.get("state"))
    if failed:
        out["severity_id"] = 2
        count = r.fields.get("count")  # auth.failed: failures aggregated per source and minute
        if isinstance(count, int) and not isinstance(count, bool):
            out["count"] = r.get("count")
    return []


def _account_change(r: _Record, out: dict[str, Any], what: str) -> list[str]:
    agent = _agent(r)
    if r.fields.get("event") == Event.KEY_ROTATED or agent is None:
        out["user"] = _user(str(r.fields.get("gateway")), 3)  # the gateway's own signing identity
    else:
        out["user"] = agent  # its owner stays in unmapped: an agent has no email address of its own
    actor = r.get("actor")
    if actor:
        out["actor"] = _operator(actor)
    _status(out, True)
    return []


def _detection_finding(r: _Record, out: dict[str, Any], title: str) -> list[str]:
    event = str(r.fields.get("event"))
    server, tool = r.get("server"), r.get("tool")
    target = ".".join(str(x) for x in (server, tool) if x)
    pin = r.get("new_pin")
    if event in (Event.TOOL_CHANGED, Event.TOOL_PINNED):
        uid = f"tool:{target}@{pin}"  # a pin of the quarantined definition closes its finding
    else:
        uid = f"{r.fields.get('gateway')}#{r.fields.get('seq')}"
    reason = r.get("reason")
    if event == Event.BUDGET_EXCEEDED and reason == "loop_repeats":
        title = "Loop detected; tool stopped for this session"
    info: dict[str, Any] = {"uid": uid, "title": title, "types": [event], "created_time": _ms(r.fields.get("ts"))}
    if reason:
        info["desc"] = f"{reason}: {r.get('used')}/{r.get('limit')}" if r.fields.get("used") is not None else reason
    out["finding_info"] = info
    resources = []
    agent = r.get("agent")
    if agent:
        owner = r.get("owner")
        resources.append({"type": "agent", "uid": agent, "name": agent, **({"owner": _human(owner)} if owner else {})})
    if r.fields.get("session"):
        resources.append({"type": "session", "uid": r.get("session")})
    if target:
        resources.append({"type": "MCP tool", "name": target})
    if resources:
        out["resources"] = resources
    closed = event == Event.TOOL_PINNED
    out["status_id"] = 4 if closed else 1
    out["status"] = _FINDING_STATUS[out["status_id"]]
    severities: dict[str, int] = {
        Event.TOOL_CHANGED: 4,
        Event.CREDENTIAL_SHARED_SUSPECTED: 4,
        Event.REFRESH_REUSED: 4,
        Event.BUDGET_EXCEEDED: 3,
        Event.BUDGET_THRESHOLD: 2,
    }
    out["severity_id"] = severities.get(event, 1)
    out["is_alert"] = out["severity_id"] >= 3
    dispositions: dict[str, tuple[int, str]] = {
        Event.TOOL_CHANGED: (3, "Quarantined"),
        Event.BUDGET_EXCEEDED: (2, "Blocked"),
        Event.BUDGET_THRESHOLD: (19, "Alert"),
        Event.CREDENTIAL_SHARED_SUSPECTED: (15, "Detected"),
        Event.TOOL_PINNED: (8, "Approved"),
        Event.REFRESH_REUSED: (2, "Blocked"),
    }
    disposition = dispositions[event]
    out["disposition_id"], out["disposition"] = disposition
    r.get("decision")  # tool.changed's "quarantine": the disposition says it
    return ["security_control"]


def _base_event(r: _Record, out: dict[str, Any], what: str) -> list[str]:
    _status(out, True)
    return []


_BUILDERS: dict[str, Callable[[_Record, dict[str, Any], str], list[str]]] = {
    "api_activity": _api_activity,
    "authentication": _authentication,
    "account_change": _account_change,
    "detection_finding": _detection_finding,
    "base_event": _base_event,
}
