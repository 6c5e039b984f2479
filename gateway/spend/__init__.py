"""Token metering of payloads, and the budgets that reserve, settle and stop.

Imports identity/, audit/, store/ and config/. limits.py (the refusal rules) imports only the
store's records, because the store backends call it.
"""
