"""Property-based tests of the SQS/SNS wire encoding: any headers and body round-trip, never
more than 10 attributes, every native attribute is one SQS accepts."""

from hypothesis import given, settings
from hypothesis import strategies as st
from messagebus_sqs._codec import MAX_ATTRIBUTES, _valid_name, _valid_value, decode_message, encode_message

from messagebus import _headers as h

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
# The key travels in its own header (h.KEY); the core never hands the codec a header of
# that name, so the generator does not either.
headers = st.dictionaries(texts.filter(lambda name: bool(name) and name != h.KEY), texts, max_size=30)


@settings(max_examples=300)
@given(body=st.binary(max_size=300), headers=headers, key=st.none() | texts)
def test_headers_body_and_key_round_trip(body: bytes, headers: dict[str, str], key: str | None) -> None:
    wire = encode_message(body, headers, key)
    assert len(wire.attributes) <= MAX_ATTRIBUTES
    for name, attr in wire.attributes.items():
        assert _valid_name(name), name
        assert _valid_value(attr["StringValue"]), (name, attr)
    native = {"Body": wire.body, "MessageAttributes": wire.attributes}
    got_body, got_headers, got_key = decode_message(native)
    assert got_body == body
    assert got_key == key
    for name, value in headers.items():
        assert got_headers.get(name) == value, name
