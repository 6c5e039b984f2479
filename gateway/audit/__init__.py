"""The audit stream: append-only, hash-chained JSON lines; the ledger."""

from gateway.audit.sink import Audit

__all__ = ["Audit"]
