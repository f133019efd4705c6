"""Property-based test of the AMQP encoding: any headers and key survive a real AMQP
content-header frame (marshalled and unmarshalled by pamqp, the wire codec of aiormq)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from messagebus_rabbitmq._codec import decode_headers, encode_properties
from pamqp import frame
from pamqp.header import ContentHeader

from messagebus.transports import headers as h

# AMQP short strings (table keys) are at most 255 bytes.
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=60)
values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200)


@settings(max_examples=200)
@given(
    headers=st.dictionaries(
        # Reserved names (the bus refuses them in user headers) carry the key and the envelope.
        names.filter(lambda n: not n.startswith(("cloudEvents:", "cloudEvents_", "messagebus-"))),
        values,
        max_size=40,
    )
)
def test_headers_survive_an_amqp_frame(headers: dict[str, str]) -> None:
    headers = {**headers, h.CE_CONTENT_TYPE: "application/json", h.CE_ID: "abc"}
    properties = encode_properties(headers, key="order-1")
    data = frame.marshal(ContentHeader(0, 10, properties), 1)
    _, _, received = frame.unmarshal(data)
    assert isinstance(received, ContentHeader)
    decoded = decode_headers(received.properties)
    for name, value in headers.items():
        assert decoded.get(name) == value, name
    assert decoded[h.KEY] == "order-1"
    assert received.properties.delivery_mode == 2
