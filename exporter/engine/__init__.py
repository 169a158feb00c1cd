"""The engine: per-model state fed by ingest (state), label joins in memory or Redis (joins, redis_joins), and
durability (storage: the journal, snapshots, Idempotency-Keys; core: the ingest turn, restore and checkpoint).

Imports ingest, the statistics, security and the config; never serve.
"""
