"""Property-based tests of the SQS/SNS wire encoding: any headers and body round-trip, never
more than 10 attributes, every native attribute is one SQS accepts."""

from hypothesis import given, settings
from hypothesis import strategies as st
from messagebus_sqs._codec import (
    BODY_ENCODING,
    MAX_ATTRIBUTES,
    decode_message,
    encode_message,
    valid_attribute,
)

from messagebus import _headers as h

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


def _user_name(name: str) -> bool:
    # What the core's header rule lets a user name a header: the binding names (ce-, ce_,
    # cloudEvents, content-type, messagebus-) are reserved, and the decoder reads a foreign
    # producer's ce-*/content-type in any case, so the generator leaves them out.
    lowered = name.lower()
    return bool(name) and not lowered.startswith(h.RESERVED_NAME_PREFIXES) and lowered not in h.RESERVED_NAMES


# Names SQS takes as attribute names as often as any text (which SQS mostly refuses).
names = st.from_regex(r"x-[a-z0-9]{1,8}", fullmatch=True) | texts.filter(_user_name)
headers = st.dictionaries(names, texts, max_size=30)
# The envelope headers the bus adds (and the key, in its own header) take slots too.
envelope = st.fixed_dictionaries(
    {},
    optional={
        h.CE_ID: texts.filter(bool),
        h.CE_TYPE: texts,
        h.CE_SOURCE: texts,
        h.CE_TIME: texts,
        h.NACKS: texts,
        "traceparent": texts,
    },
)


@settings(max_examples=300)
@given(body=st.binary(max_size=300), user=headers, bus=envelope, key=st.none() | texts)
def test_headers_body_and_key_round_trip(
    body: bytes, user: dict[str, str], bus: dict[str, str], key: str | None
) -> None:
    """Catches a header dropped or altered on the way (packing, the 10-attribute limit,
    names or values SQS refuses, base64 bodies), and a user header losing its real attribute
    to the envelope's: the user's headers that SQS accepts get the first slots."""
    headers = {**user, **bus}
    wire = encode_message(body, headers, key)
    assert len(wire.attributes) <= MAX_ATTRIBUTES
    for name, attr in wire.attributes.items():
        assert valid_attribute(name, attr["StringValue"]), (name, attr)
    native = {"Body": wire.body, "MessageAttributes": wire.attributes}
    got_body, got_headers, got_key = decode_message(native)
    assert got_body == body
    assert got_key == key
    for name, value in headers.items():
        assert got_headers.get(name) == value, name
    accepted = [n for n in user if valid_attribute(n, user[n])]
    if len(wire.attributes) < MAX_ATTRIBUTES or len(accepted) < MAX_ATTRIBUTES - 1:
        real = accepted[: MAX_ATTRIBUTES - 1 - (BODY_ENCODING in wire.attributes)]
        assert set(real) <= set(wire.attributes), "a user header was packed while an envelope header had a slot"
