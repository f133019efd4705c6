"""Fixtures: a Tansu broker (Kafka wire protocol) per test session, or MESSAGEBUS_TEST_KAFKA_URL."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from kafka_broker import TEST_OPTIONS, Tansu, crashable_tansu, start_tansu
from messagebus_kafka import KafkaTransport

from messagebus.testing._brokers import BrokerProcess


@pytest.fixture(scope="session")
def kafka_url() -> Iterator[str]:
    """``kafka://`` URL of the session's broker, with test-friendly timings."""
    env = os.environ.get("MESSAGEBUS_TEST_KAFKA_URL")
    if env:
        yield env
        return
    broker = start_tansu()
    try:
        yield f"kafka://127.0.0.1:{broker.port}?{TEST_OPTIONS}"
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def tansu_factory() -> Iterator[Callable[..., Tansu]]:
    """Start extra Tansu brokers (for proxy tests); all are killed at session end."""
    started: list[Tansu] = []

    def factory(**kwargs: int | bool | None) -> Tansu:
        broker = start_tansu(**kwargs)
        started.append(broker)
        return broker

    try:
        yield factory
    finally:
        for broker in started:
            broker.stop()


@pytest.fixture(scope="session")
def kafka_crash_broker() -> Iterator[BrokerProcess]:
    """A Tansu of its own for the crash tests (S3 storage on a private moto server, so data
    survives a SIGKILL), started on first use and killed at the end of the session."""
    with tempfile.TemporaryDirectory(prefix="messagebus-tansu-") as base:
        tansu = crashable_tansu(base)
        try:
            yield tansu.broker
        finally:
            tansu.close()


@pytest.fixture
def unique() -> str:
    """A fresh name prefix so tests never share topics or groups."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def transport(kafka_url: str) -> AsyncIterator[KafkaTransport]:
    """A connected Kafka transport on the test broker, closed afterwards."""
    t = KafkaTransport.from_url(kafka_url)
    await t.connect()
    try:
        yield t
    finally:
        await t.close()
