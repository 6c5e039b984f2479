"""Who may delegate to an agent: the agent's `delegators` allow-list and the token's `may_act`.

A delegator entry is either an email glob (`*@example.com`, `alice@example.com`),
matched case-insensitively against the identity provider's verified email only,
or `iss|sub` (globs allowed), matched against the provider's issuer and subject.
An empty list lets nobody delegate. A `may_act` claim in the subject token
(RFC 8693 §4.4) narrows further: when present, it must name this agent as `sub`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.config.files import glob_matches
from gateway.identity.idp import Human


def may_delegate(delegators: Sequence[str], human: Human) -> bool:
    """True when one entry of the allow-list matches this human."""
    pair = f"{human.issuer}|{human.subject}"
    for entry in delegators:
        if "|" in entry:
            if entry == pair or glob_matches(entry, pair):
                return True
        elif human.email is not None and glob_matches(entry.lower(), human.email.lower()):
            return True
    return False


def may_act_allows(may_act: Any, agent_id: str) -> bool:
    """A subject token without `may_act` leaves it to the allow-list; with one, it must name the agent."""
    if may_act is None:
        return True
    return isinstance(may_act, dict) and may_act.get("sub") == agent_id
