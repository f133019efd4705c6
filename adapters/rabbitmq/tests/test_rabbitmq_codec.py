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
