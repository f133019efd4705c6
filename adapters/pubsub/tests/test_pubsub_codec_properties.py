"""Property-based tests of the Pub/Sub attribute encoding: any headers and key round-trip,
within Pub/Sub's attribute limits."""

from hypothesis import given, settings
from hypothesis import strategies as st
from messagebus_pubsub._codec import decode_attributes, encode_attributes

from messagebus import InvalidHeaders
from messagebus.transports import headers as h

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)


def _user_name(name: str) -> bool:
    # What the core's header rule lets a user name a header: the binding names (ce-, ce_,
    # cloudEvents, content-type, messagebus-) are reserved, and the decoder reads a foreign
    # producer's ce-*/Content-Type in any case, so the generator leaves them out.
    try:
        h.validate_headers({name: ""})
    except InvalidHeaders:
        return False
    return True


header_maps = st.dictionaries(texts.filter(_user_name), texts, max_size=120)


@settings(max_examples=200)
@given(headers=header_maps, key=st.none() | texts, ordering=st.booleans())
def test_attributes_round_trip_within_limits(headers: dict[str, str], key: str | None, ordering: bool) -> None:
    attributes, ordering_key = encode_attributes(headers, key, ordering)
    assert len(attributes) <= 100
    for name, value in attributes.items():
        assert 0 < len(name.encode()) <= 256
        assert len(value.encode()) <= 1024
        assert not name.lower().startswith("goog")
    decoded = decode_attributes(attributes)
    for name, value in headers.items():
        assert decoded.get(name) == value, name
    if key:
        assert ordering_key == key or decoded.get(h.KEY) == key
