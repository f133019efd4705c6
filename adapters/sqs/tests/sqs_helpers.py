"""Helpers shared by the SQS adapter tests (imported by basename; unique name on purpose)."""

from __future__ import annotations

from urllib.parse import urlsplit


def make_url(endpoint: str, prefix: str, **options: object) -> str:
    """An sqs:// URL for the moto server with short polls and per-test prefixes."""
    query = {
        "region": "us-east-1",
        "endpoint_url": endpoint,
        "wait_time": 1,
        "visibility_timeout": 20,  # generous: moto answers slowly on a loaded machine, extensions lag
        "queue_prefix": prefix,
        "topic_prefix": prefix,
    }
    query.update(options)
    text = "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in query.items())
    return f"sqs://?{text}"


def endpoint_port(endpoint: str) -> int:
    """The TCP port of an http:// endpoint URL."""
    port = urlsplit(endpoint).port
    assert port is not None
    return port
