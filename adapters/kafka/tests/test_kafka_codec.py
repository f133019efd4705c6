"""Header mapping between logical (CloudEvents ``ce-``) and Kafka (``ce_``) names."""

from __future__ import annotations

from messagebus_kafka._codec import decode_headers, encode_headers


def test_cloudevents_prefix_round_trip() -> None:
    logical = {"ce-id": "1", "ce-type": "Order", "traceparent": "00-ab-cd-01", "x-tenant": "ünï"}
    wire = encode_headers(logical)
    assert ("ce_id", b"1") in wire and ("ce_type", b"Order") in wire
    assert ("x-tenant", "ünï".encode()) in wire
    assert decode_headers(wire) == logical


def test_foreign_headers_never_break_decoding() -> None:
    # A producer outside messagebus may send null or non-UTF-8 header values.
    decoded = decode_headers([("ce_id", b"\xff\xfe"), ("empty", None), ("ce_source", b"svc")])
    assert decoded["ce-source"] == "svc"
    assert decoded["empty"] == ""
    assert decoded["ce-id"] == "\ufffd\ufffd"
