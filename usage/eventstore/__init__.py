"""Where raw usage events are kept: PostgreSQL (the default) or ClickHouse (`current.event_store`).

Rollups, dictionaries, tag sets and everything else stay in PostgreSQL; counters in Redis.
"""
