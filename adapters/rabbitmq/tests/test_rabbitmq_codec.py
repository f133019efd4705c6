"""The fast properties encoder writes exactly what pamqp would decode back."""

from __future__ import annotations

import pytest
from messagebus_rabbitmq._codec import FastProperties, encode_properties
from pamqp.commands import Basic

from messagebus import InvalidHeaders


def decode(data: bytes) -> dict[str, object]:
    props = Basic.Properties()
    props.unmarshal(int.from_bytes(data[:2], "big"), data[2:])
    return {name: getattr(props, name) for name in props.__slots__}


@pytest.mark.parametrize(
    "headers",
    [
        {
            "ce-id": "a" * 32,
            "ce-source": "svc",
            "ce-type": "Order",
            "ce-specversion": "1.0",
            "ce-time": "2026-01-01T00:00:00+00:00",
        },
        {"ce-id": "b", "x-unicode-é": "välue ✓", "x-long": "v" * 70_000, "traceparent": "00-1-2-01"},
        {"ce-id": "c", "ce-datacontenttype": "text/plain; charset=utf-8"},
        {},
    ],
)
def test_fast_encoding_round_trips_like_pamqp(headers: dict[str, str]) -> None:
    props = encode_properties(headers, "order-1")
    assert decode(props.marshal()) == decode(Basic.Properties.marshal(props))


def test_unusual_properties_fall_back_to_pamqp() -> None:
    props = FastProperties(content_type="application/json", headers={"n": 1, "k": "v"}, priority=5)
    assert decode(props.marshal()) == decode(Basic.Properties.marshal(props))
    props = FastProperties(headers={"k": 1}, delivery_mode=2)
    assert props.marshal() == Basic.Properties.marshal(props)


def test_header_names_keep_up_to_255_bytes_and_longer_ones_are_refused() -> None:
    name = "ü" * 127  # 254 bytes: pamqp alone would cut it to 128
    assert decode(encode_properties({name: "v"}, None).marshal())["headers"] == {name: "v"}
    with pytest.raises(InvalidHeaders, match="at most 255"):
        encode_properties({"x" * 256: "v"}, None)  # refused before anything is sent


def test_decoding_reads_every_binding_form_and_the_brokers_properties() -> None:
    """Catches foreign CloudEvents read wrongly: an AMQP timestamp or the SDK's integer
    (milliseconds) ``time`` dropped or left as a number, a table ``datacontenttype``
    overriding the ``content_type`` property the binding maps it to, and the AMQP
    ``message_id``/``timestamp`` ignored when the producer sent no CloudEvents id/time (or
    overriding the ones it sent)."""
    from datetime import UTC, datetime

    from messagebus_rabbitmq._codec import decode_headers

    when = datetime(2024, 5, 1, 10, tzinfo=UTC)
    props = Basic.Properties(
        content_type="text/plain",
        message_id="m-1",
        timestamp=datetime(2000, 1, 1, tzinfo=UTC),
        headers={"cloudEvents_id": "e-1", "cloudEvents_time": 1714557600000, "cloudEvents_datacontenttype": "x/y"},
    )
    assert decode_headers(props) == {"ce-id": "e-1", "ce-time": when.isoformat(), "ce-datacontenttype": "text/plain"}
    plain = Basic.Properties(message_id="m-2", timestamp=when, headers={"at": when, "n": 3})
    assert decode_headers(plain) == {"ce-id": "m-2", "ce-time": when.isoformat(), "at": when.isoformat(), "n": "3"}
