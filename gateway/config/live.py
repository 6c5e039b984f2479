"""gateway.yaml as last applied: the one value hot reload swaps (gateway/config/reload.py).

Components that read a RELOADABLE field (admin_token, operators, prices, agent_defaults, ...) hold this
and read `current` at each use, so a reload reaches them without being rebuilt; everything else takes
the fields it needs once, at construction.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.files import GatewayConfig


@dataclass
class LiveConfig:
    current: GatewayConfig
