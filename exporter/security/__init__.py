"""Who may do what, and over which channel: bearer tokens and their actions (auth), the audit log (audit),
Prometheus' web config file (webconfig: basic auth, TLS settings, reloads) and the TLS front of the port (tls).

The lowest layer: it imports nothing else of mlmon.
"""
