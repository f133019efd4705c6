"""Transport URLs: parsing, password redaction and typed query options."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from ._errors import InvalidOption, InvalidURL

__all__ = ["TransportOptions", "TransportURL", "parse_options"]

_REDACTED = "***"
_SECRET = re.compile(r"password|secret|token|key$", re.IGNORECASE)

OptionsT = TypeVar("OptionsT", bound="TransportOptions")


@dataclass(frozen=True, slots=True)
class TransportURL:
    """A parsed transport URL such as ``amqp://user:pw@host:5672/vhost?heartbeat=30``.

    Immutable and thread-safe. ``str()`` and ``repr()`` never show the password; use
    :attr:`password` to read it. Several hosts are allowed (``kafka://h1:9092,h2:9092``).
    """

    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    path: str = ""
    query: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> TransportURL:
        """Parse ``url``. Raises :class:`InvalidURL` saying what is wrong (password redacted)."""
        if not isinstance(url, str) or not url.strip():
            raise InvalidURL(f"transport URL must be a non-empty string such as 'memory://', got {url!r}")
        if "://" not in url:
            raise InvalidURL(
                f"transport URL {_redact_raw(url)!r} has no scheme; expected SCHEME://..., "
                "for example memory://, amqp://guest:guest@localhost:5672/, kafka://localhost:9092"
            )
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise InvalidURL(f"cannot parse transport URL {_redact_raw(url)!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if not scheme.isascii() or not scheme.replace("+", "").replace("-", "").isalnum():
            raise InvalidURL(f"transport URL {_redact_raw(url)!r} has an invalid scheme {scheme!r}")
        netloc = parts.netloc
        if "@" not in netloc and "@" in parts.path:
            # `amqp://u:p/w@h/`: an unescaped '/' ended the authority inside the password, whose
            # head would otherwise be read (and echoed in errors) as a host and port.
            raise InvalidURL(
                f"transport URL {_redact_raw(url)!r} has an '@' after its host part: percent-encode a '/' in the "
                "user name or password as %2F (or an '@' in the path as %40)"
            )
        username = password = None
        if "@" in netloc:
            userinfo, netloc = netloc.rsplit("@", 1)
            user, sep, pw = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(pw) if sep else None
        hosts = tuple(_parse_host(h, url) for h in netloc.split(",")) if netloc else ()
        query: dict[str, str] = {}
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise InvalidURL(
                f"transport URL {_redact_raw(url)!r} has a malformed query string; expected key=value&key=value"
            ) from None
        for key, value in pairs:
            if key in query:
                raise InvalidURL(f"transport URL {_redact_raw(url)!r} repeats the query option {key!r}")
            query[key] = value
        return cls(scheme, hosts, username, password, unquote(parts.path), query)

    @property
    def host(self) -> str | None:
        """The first host, or ``None`` when the URL names none."""
        return self.hosts[0][0] if self.hosts else None

    @property
    def port(self) -> int | None:
        """The first host's port, or ``None``."""
        return self.hosts[0][1] if self.hosts else None

    def with_hosts(self, hosts: tuple[tuple[str, int | None], ...]) -> TransportURL:
        """A copy pointing at other hosts (used to route a transport through a proxy)."""
        return TransportURL(self.scheme, hosts, self.username, self.password, self.path, dict(self.query))

    def render(self, *, redact: bool = True) -> str:
        """The URL as a string; the password, and query options named like secrets
        (``*password*``, ``*secret*``, ``*token*``, ``*key``), are replaced by ``***`` unless
        ``redact=False``."""
        auth = ""
        if self.username is not None or self.password is not None:
            auth = quote(self.username or "", safe="")
            if self.password is not None:
                auth += ":" + (_REDACTED if redact else quote(self.password, safe=""))
            auth += "@"
        netloc = ",".join(h if p is None else f"{_bracket(h)}:{p}" for h, p in self.hosts)
        query = "&".join(
            f"{quote(k, safe='')}={_REDACTED if redact and _SECRET.search(k) else quote(v, safe='/:')}"
            for k, v in self.query.items()
        )
        return f"{self.scheme}://{auth}{netloc}{quote(self.path, safe='/')}" + (f"?{query}" if query else "")

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"TransportURL({self.render()!r})"


class TransportOptions(BaseModel):
    """Base class for a transport's URL query options.

    Subclass it with typed fields and defaults; :func:`parse_options` fills it from a URL and
    rejects unknown names and ill-typed values with the list of valid options.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def parse_options(url: TransportURL, model: type[OptionsT], **overrides: Any) -> OptionsT:
    """Validate ``url.query`` (plus ``overrides``) into ``model``.

    Raises :class:`InvalidOption` naming the bad option, what was given and what is allowed.
    """
    data: dict[str, Any] = {**url.query, **overrides}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        valid = ", ".join(sorted(model.model_fields)) or "(none)"
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown option {name!r}")
            elif not name:
                # A model-level check: its input is every option, secrets included; say only why.
                problems.append(err["msg"])
            else:
                given = "***" if _SECRET.search(name) else repr(data.get(name))
                problems.append(f"option {name!r}={given}: {err['msg']}")
        raise InvalidOption(
            f"{'; '.join(problems)} in {url.render()!r}. Valid options for {url.scheme}://: {valid}"
        ) from None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _parse_host(item: str, url: str) -> tuple[str, int | None]:
    # An empty host never means localhost: `amqp://u:pw@:5699/` or `kafka://h1,,h2` is a typo, and
    # a client given "" would connect somewhere the URL does not say.
    if not item:
        raise InvalidURL(
            f"transport URL {_redact_raw(url)!r} has an empty host in its host list; expected host1:port,host2:port"
        )
    host, port_text = item, ""
    if item.startswith("["):
        end = item.find("]")
        if end < 0:
            raise InvalidURL(f"transport URL {_redact_raw(url)!r} has an unclosed IPv6 bracket")
        host, rest = item[1:end], item[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif ":" in item:
        host, _, port_text = item.rpartition(":")
    if not host:
        raise InvalidURL(f"transport URL {_redact_raw(url)!r} names a port but the host is missing: {item!r}")
    if not port_text:
        return unquote(host), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidURL(f"transport URL {_redact_raw(url)!r} has an invalid port {port_text!r}; expected 1-65535")
    return unquote(host), int(port_text)


def _redact_raw(url: str) -> str:
    """Redact the password of a URL that may not parse.

    The user info ends at the last ``@`` before the query: a password with an unescaped ``/``
    or ``@`` (``amqp://u:p/w@h/``) is redacted whole, not cut at its first ``/``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url.split("@", 1)[-1] if "@" in url else url
    before_query, qmark, query = rest.partition("?")
    if "@" not in before_query:
        return url
    userinfo, _, after = before_query.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + _REDACTED
    return f"{scheme}{sep}{userinfo}@{after}{qmark}{query}"
