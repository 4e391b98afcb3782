"""The operator console: a live web page over the pipeline's topics, Redis state, registry and workers.

Modules: `auth` (password hashing, sessions, CSRF), `labels` (operator feedback on alerts and the library
API that reads it back), `live` (the group-less Kafka/Redis feed behind the live pages), `frames` (reading an
alert's frame back), `fleet` (workers' /health and /metrics), `app` (Starlette routes and templates).
"""
