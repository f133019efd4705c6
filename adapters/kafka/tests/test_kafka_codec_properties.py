"""Property-based tests of the Kafka header encoding: logical headers round-trip through
record headers, with CloudEvents attributes under the Kafka binding's ``ce_`` prefix."""

from hypothesis import given
from hypothesis import strategies as st
from messagebus_kafka._codec import HeaderEncoder, RecordHeaders, decode_headers, encode_headers

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


wire_names = st.one_of(
    texts,
    st.sampled_from(["ce_id", "ce-id", "ce_datacontenttype", "ce-datacontenttype", "ce_", "messagebus-due"]),
    st.sampled_from(["messagebus-attempt", "traceparent", "ce_x", "ce-x", ""]),
)
wire_values = st.one_of(st.none(), st.binary(max_size=20), texts.map(str.encode))


@given(st.lists(st.tuples(wire_names, wire_values), max_size=12), wire_names)
def test_lazy_record_headers_read_like_decoding_them_all(wire: list[tuple[str, bytes | None]], asked: str) -> None:
    # RecordHeaders.get scans instead of decoding; whatever the names (repeats, both
    # prefixes, internal ones), it must answer as the fully decoded view would.
    expected = decode_headers(wire)
    expected.pop("messagebus-due", None)
    expected.pop("messagebus-attempt", None)
    lazy = RecordHeaders(wire)
    for name in [asked, *expected]:
        assert lazy.get(name) == expected.get(name)
        assert (name in lazy) == (name in expected)
    assert dict(lazy) == expected and len(lazy) == len(expected)
    assert lazy.get(asked) == expected.get(asked), "answers stay the same once decoded"


@given(st.lists(st.dictionaries(texts.filter(bool), texts, max_size=8), max_size=6))
def test_a_publish_encodes_repeated_headers_like_encoding_each_message(batch: list[dict[str, str]]) -> None:
    # HeaderEncoder encodes each distinct (name, value) of a publish once and reuses it.
    encoder = HeaderEncoder()
    for logical in [*batch, *batch]:
        wire, size = encoder.encode(logical)
        assert wire == encode_headers(logical)
        assert size == sum(len(k) + len(v) for k, v in wire)
