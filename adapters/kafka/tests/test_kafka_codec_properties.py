"""Property-based tests of the Kafka header encoding: logical headers round-trip through
record headers, with CloudEvents attributes under the Kafka binding's ``ce_`` prefix."""

from hypothesis import given
from hypothesis import strategies as st
from messagebus_kafka._codec import decode_headers, encode_headers

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)


@given(st.dictionaries(texts.filter(lambda n: bool(n) and not n.startswith("ce_")), texts, max_size=40))
def test_headers_round_trip(headers: dict[str, str]) -> None:
    wire = encode_headers(headers)
    for name, _ in wire:
        assert not name.startswith("ce-"), "CloudEvents attributes use the Kafka binding prefix"
    assert decode_headers(wire) == headers


def test_cloudevents_prefix_on_the_wire() -> None:
    wire = dict(encode_headers({"ce-id": "1", "ce-type": "t", "traceparent": "x"}))
    assert wire == {"ce_id": b"1", "ce_type": b"t", "traceparent": b"x"}
