"""Token metering of payloads, and the budgets that reserve, settle and stop.

Imports identity/, audit/, store/ and config/.
"""
