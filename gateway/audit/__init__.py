"""The audit stream: append-only, hash-chained JSON lines; the ledger."""

from gateway.audit.sink import Audit, build_audit

__all__ = ["Audit", "build_audit"]
