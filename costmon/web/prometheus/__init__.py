"""Prometheus metrics: `GET /metrics` for operators (see docs/prometheus.md).

Two kinds of figures, merged in one scrape:
- read from the database at scrape time (`collector`): spend, calls and tokens since the
  beginning, budgets, alert deliveries, emergency stops. The database is the truth, so every web
  process answers the same, however many there are.
- observed by the web processes (`instruments`): request latency and events ingested, kept by
  prometheus_client's multiprocess mode in files that any process can sum.
"""
