"""linewatch streaming app: Kafka workers, thresholds in Redis, alerts, registry, retraining, CLI."""

__version__ = "0.1.0"
