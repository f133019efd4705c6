"""Property-based tests: URL parsing, header mapping, name sanitising, decoding arbitrary bytes."""

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from messagebus import DecodeError, InvalidURL, TransportURL
from messagebus._serialization import decoder_for, encode
from messagebus.transports import from_wire, sanitize_name, to_wire

header_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


@given(st.text(max_size=200))
def test_url_parsing_never_crashes_unexpectedly(raw: str) -> None:
    try:
        url = TransportURL.parse(raw)
    except InvalidURL as exc:
        assert str(exc)
    else:
        assert url.scheme


@given(
    user=st.text(min_size=1, max_size=20),
    password=st.text(min_size=1, max_size=30),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    port=st.integers(1, 65535),
)
def test_password_round_trips_but_is_never_rendered(user: str, password: str, host: str, port: int) -> None:
    from urllib.parse import quote

    url = TransportURL.parse(f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/v")
    assert url.password == password
    assert url.username == user
    assert (host, port) == (url.host, url.port)
    assert str(url).startswith(f"amqp://{quote(user, safe='')}:***@{host}:{port}/")
    assert repr(url) == f"TransportURL({str(url)!r})"
    assert TransportURL.parse(url.render(redact=False)) == url


@given(
    st.dictionaries(header_names, st.text(max_size=50), max_size=40), st.sampled_from(["ce-", "ce_", "cloudEvents:"])
)
def test_header_prefix_mapping_round_trips(headers: dict[str, str], prefix: str) -> None:
    clean = {k: v for k, v in headers.items() if not k.startswith(prefix) or prefix == "ce-"}
    assert from_wire(to_wire(clean, prefix), prefix) == clean


@given(st.text(min_size=1, max_size=300), st.integers(20, 255))
def test_sanitized_names_follow_the_rules(name: str, limit: int) -> None:
    out = sanitize_name(name, max_length=limit)
    assert len(out) <= limit
    assert re.fullmatch(r"[A-Za-z0-9_-]+", out)
    assert sanitize_name(name, max_length=limit) == out  # deterministic


@given(st.text(alphabet="ab.-", min_size=1, max_size=12), st.text(alphabet="ab.-", min_size=1, max_size=12))
def test_different_names_never_collide(a: str, b: str) -> None:
    if a != b:
        assert sanitize_name(a, max_length=80) != sanitize_name(b, max_length=80)


class Order(BaseModel):
    id: int
    items: list[str]


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from(["application/json", "application/octet-stream", "text/plain"]))
@pytest.mark.parametrize("target", [Order, dict, list[int], str, bytes, Any])
def test_decoding_arbitrary_bytes_gives_a_value_or_a_clear_error(target: Any, body: bytes, content_type: str) -> None:
    decode = decoder_for(target)
    try:
        decode(body, content_type)
    except DecodeError as exc:
        assert str(exc)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_json_payloads_round_trip(payload: Any) -> None:
    body, content_type = encode(payload)
    if isinstance(payload, str):
        assert decoder_for(str)(body, content_type) == payload
    else:
        assert decoder_for(Any)(body, content_type) == payload
