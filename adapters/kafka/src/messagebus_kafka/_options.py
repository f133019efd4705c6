"""URL query options of the Kafka transport, validated before any I/O."""

from __future__ import annotations

import os
from typing import Literal

from aiokafka import codec
from pydantic import Field

from messagebus import InvalidOption
from messagebus.transports import TransportOptions, TransportURL, parse_options

__all__ = ["KafkaOptions", "load_options"]

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]

_CODEC_AVAILABLE = {"none": lambda: True, "gzip": codec.has_gzip, "snappy": codec.has_snappy}
_CODEC_AVAILABLE.update(lz4=codec.has_lz4, zstd=codec.has_zstd)
_CODEC_PACKAGE = {"snappy": "cramjam", "lz4": "cramjam", "zstd": "cramjam"}


class KafkaOptions(TransportOptions):
    """Options of ``kafka://`` URLs (all optional; see the adapter README for each one).

    Immutable; validated by :func:`load_options`, which also merges the URL's userinfo into
    the SASL credentials.
    """

    client_id: str = Field("messagebus", min_length=1, max_length=200)
    #: Partitions of topics this transport creates (main, retry and dead-letter topics).
    partitions: int = Field(3, ge=1, le=10_000)
    #: Replication factor of created topics; use 3 on a production cluster.
    replication_factor: int = Field(1, ge=1, le=32)
    security_protocol: SecurityProtocol | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    compression: Compression = "none"
    session_timeout_ms: int = Field(10_000, ge=1_000, le=3_600_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100, le=3_600_000)
    rebalance_timeout_ms: int = Field(30_000, ge=1_000, le=3_600_000)
    max_poll_interval_ms: int = Field(300_000, ge=1_000, le=86_400_000)
    max_request_size: int = Field(1_048_576, ge=16_384, le=1_073_741_824)
    request_timeout_ms: int = Field(30_000, ge=1_000, le=3_600_000)
    #: Seconds ``connect()`` keeps trying to reach the bootstrap servers before ConnectError.
    connect_timeout: float = Field(10.0, gt=0, le=3_600)
    #: Idempotent producer (no duplicates from producer retries). Needs broker support.
    idempotence: bool = True
    linger_ms: int = Field(0, ge=0, le=60_000)
    max_batch_size: int = Field(262_144, ge=1_024, le=1_073_741_824)
    #: Most records one fetch hands to the dispatcher. Kept small on purpose: records of one
    #: hand-over live together, and a few hundred of them (each with its header tuples) are
    #: enough to trip CPython's cyclic GC into promoting them and then scanning the whole heap.
    #: Fetches still move ``max_partition_fetch_bytes`` at a time; this only slices them.
    fetch_max_records: int = Field(200, ge=1, le=100_000)
    #: How long the broker may hold a fetch that has no data. Kept short: the consumer also
    #: fetches the (mostly empty) retry topic, and one fetch per broker is in flight at a time.
    fetch_max_wait_ms: int = Field(100, ge=0, le=60_000)
    #: Most bytes one fetch returns per partition (Kafka's ``max.partition.fetch.bytes``).
    max_partition_fetch_bytes: int = Field(1_048_576, ge=1_024, le=1_073_741_824)
    #: How often consumers refresh topic metadata: a pattern subscription sees a new matching
    #: topic within this (plus a group rebalance). aiokafka's default is five minutes.
    metadata_max_age_ms: int = Field(5_000, ge=100, le=86_400_000)

    def check(self) -> None:
        """Cross-field checks; raises ``ValueError`` with a message safe to show (no secrets)."""
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be lower than session_timeout_ms")
        if (self.sasl_username is None) != (self.sasl_password is None):
            raise ValueError("SASL needs both a user name and a password (sasl_username/sasl_password or URL userinfo)")
        protocol = self.security_protocol
        if protocol in ("SASL_PLAINTEXT", "SASL_SSL") and self.sasl_username is None:
            raise ValueError(f"security_protocol={protocol} needs credentials (user:password@ in the URL)")
        if protocol in ("PLAINTEXT", "SSL") and (self.sasl_username is not None or self.sasl_mechanism):
            raise ValueError(
                f"security_protocol={protocol} does not use SASL, but SASL settings were given; "
                "use SASL_PLAINTEXT or SASL_SSL"
            )
        if self.sasl_mechanism is not None and self.sasl_username is None:
            raise ValueError(f"sasl_mechanism={self.sasl_mechanism} needs credentials (user:password@ in the URL)")
        if protocol == "PLAINTEXT" and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError("ssl_* files were given but security_protocol=PLAINTEXT; use SSL or SASL_SSL")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (client certificate and its key)")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}={path!r} is not a readable file")
        if not _CODEC_AVAILABLE[self.compression]():
            package = _CODEC_PACKAGE.get(self.compression, self.compression)
            raise ValueError(f"compression={self.compression} needs the {package!r} package installed")

    @property
    def uses_ssl(self) -> bool:
        """Whether the connection is TLS-encrypted."""
        return self.effective_protocol in ("SSL", "SASL_SSL")

    @property
    def effective_protocol(self) -> str:
        """The security protocol, derived from credentials and SSL files when not given."""
        if self.security_protocol is not None:
            return self.security_protocol
        tls = bool(self.ssl_cafile or self.ssl_certfile)
        if self.sasl_username is not None:
            return "SASL_SSL" if tls else "SASL_PLAINTEXT"
        return "SSL" if tls else "PLAINTEXT"


def load_options(url: TransportURL) -> KafkaOptions:
    """Validate ``url``'s query (plus userinfo as SASL credentials) into :class:`KafkaOptions`.

    Raises :class:`InvalidOption` naming what is wrong and what is allowed. Never shows the
    password.
    """
    overrides: dict[str, str] = {}
    if url.username is not None or url.password is not None:
        if "sasl_username" in url.query or "sasl_password" in url.query:
            raise InvalidOption(
                f"credentials given twice in {url.render()!r}: use user:password@ or sasl_username/sasl_password"
            )
        if url.username is not None:
            overrides["sasl_username"] = url.username
        if url.password is not None:
            overrides["sasl_password"] = url.password
    options = parse_options(url, KafkaOptions, **overrides)
    # Cross-field rules run here, not in a pydantic model validator: parse_options echoes a
    # model-level error's input, which would include the password.
    try:
        options.check()
    except ValueError as exc:
        raise InvalidOption(f"{exc} in {url.render()!r}") from None
    return options
