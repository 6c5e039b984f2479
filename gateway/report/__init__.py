"""Reports read off the audit stream: chargeback (chargeback.py; html.py and focus.py render it),
evidence figures, agent recertification.

Imports audit/, identity/, spend/, store/, upstream/, config/; only commands/ (and the console) import it.
"""
