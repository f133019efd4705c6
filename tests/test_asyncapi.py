"""The AsyncAPI 3.0 document of a Bus (``messagebus asyncapi``), checked with the AsyncAPI
project's own parser (@asyncapi/parser, run by Node from tests/asyncapi)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from messagebus import Bus, Envelope, TransportURL
from messagebus.__main__ import main
from messagebus._asyncapi import _servers, asyncapi_document, render
from samples.shop import services

VALIDATOR = Path(__file__).parent / "asyncapi"
Validate = Callable[[dict[str, dict[str, Any]]], tuple[int, dict[str, list[dict[str, Any]]]]]


@pytest.fixture(scope="session")
def validate(tmp_path_factory: pytest.TempPathFactory) -> Validate:
    """``validate({name: document})`` -> (exit status, diagnostics per file) of the official
    parser. Installs it (npm ci) once when node_modules is missing, as in a clean CI clone."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are needed to validate AsyncAPI documents with @asyncapi/parser")
        pytest.skip("node/npm not installed")
    if not (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=VALIDATOR,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    folder = tmp_path_factory.mktemp("asyncapi")

    def run(documents: dict[str, dict[str, Any]]) -> tuple[int, dict[str, list[dict[str, Any]]]]:
        paths = []
        for name, document in documents.items():
            path = folder / f"{name}.json"
            path.write_text(json.dumps(document))
            paths.append(str(path))
        done = subprocess.run([node, "validate.mjs", *paths], cwd=VALIDATOR, capture_output=True, text=True, timeout=60)
        assert done.returncode in (0, 1), done.stderr
        report = json.loads(done.stdout)
        return done.returncode, {Path(p).stem: diagnostics for p, diagnostics in report.items()}

    return run


def _errors(report: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {
        name: [d for d in ds if d["severity"] == 0]
        for name, ds in report.items()
        if any(d["severity"] == 0 for d in ds)
    }


class Order(BaseModel):
    order_id: str
    total: float


class Line(BaseModel):
    sku: str


class Quote(BaseModel):
    order_id: str
    lines: list[Line]


class PriceRequest(BaseModel):
    order_id: str


class Audit(BaseModel):
    what: str


def _small_bus(url: str = "memory://") -> Bus:
    bus = Bus.from_url(url, service="pricing")

    @bus.subscribe("orders.created", filter={"region": "eu"})
    async def on_order(order: Order) -> None: ...

    @bus.subscribe("orders.*", group="audit")
    async def on_any(envelope: Envelope) -> None: ...

    @bus.subscribe("payments.#", group="audit")
    async def on_payment(payment: dict[str, float], envelope: Envelope) -> None: ...

    @bus.consume("quotes")
    async def quote(request: PriceRequest) -> Quote | None:
        return None

    @bus.consume("audits", batch=10)
    async def audits(items: list[Audit]) -> None: ...

    bus.publishes("orders.created", Order)
    bus.publishes("orders.created", Order)
    bus.sends("quotes", PriceRequest)
    bus.sends("blobs", bytes)
    bus.publishes("notes", str)
    return bus


def _shop_buses(url: str) -> dict[str, Bus]:
    def log(service: str, text: str) -> None: ...

    return {
        "orders": services.build_orders(url, log),
        "payments": services.build_payments(url, log),
        "shipping": services.build_shipping(url, log),
        "notifications": services.build_notifications(url, log),
    }


def test_shop_documents_pass_the_asyncapi_parser(validate: Validate) -> None:
    """Bug caught: a document the AsyncAPI tools reject (a dangling $ref, a field AsyncAPI 3
    does not have, a message an operation names but its channel lacks) for the shop's buses."""
    documents = {name: asyncapi_document(bus) for name, bus in _shop_buses("amqp://guest:guest@localhost/").items()}
    documents["small"] = asyncapi_document(_small_bus("kafka://localhost:9092"))
    status, report = validate(documents)
    assert _errors(report) == {}
    assert status == 0
    payments = documents["payments"]
    assert list(payments["operations"]) == ["receive.orders.created.payments", "send.payments.completed"]
    assert list(documents["orders"]["operations"]) == ["send.orders.created"]
    assert set(documents["shipping"]["operations"]) == {
        "receive.payments.completed.shipping",
        "send.orders.shipped",
        "send.emails",
    }
    assert payments["channels"]["orders.created"]["address"] == "orders.created"
    assert payments["components"]["schemas"]["OrderCreated"]["required"] == ["order_id", "customer", "email", "total"]
    notifications = documents["notifications"]
    assert set(notifications["operations"]) == {"receive.emails", "receive.orders.created.payments.dlq"}


def test_the_validator_reports_errors(validate: Validate) -> None:
    """Bug caught: a validator that passes everything (wrong parser call, errors read as
    warnings) would make the shop test prove nothing."""
    broken = asyncapi_document(_small_bus())
    broken["operations"]["receive.quotes"]["channel"] = {"$ref": "#/channels/nowhere"}
    status, report = validate({"broken": broken})
    assert status == 1
    assert _errors(report)["broken"]


def test_channels_operations_and_payloads_of_a_small_bus() -> None:
    """Bug caught: a handler's model missing from the payload, the reply of a queue handler
    missing, a pattern documented as a topic, the filter or group lost, a declared send
    missing or repeated, a batch documented as a list instead of its items."""
    doc = asyncapi_document(_small_bus(), title="Pricing", version="2.1.0")
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "Pricing" and doc["info"]["version"] == "2.1.0"
    channels, operations = doc["channels"], doc["operations"]
    assert {k: v["address"] for k, v in channels.items()} == {
        "orders.created": "orders.created",
        "orders._star_": "orders.*",
        "payments._hash_": "payments.#",
        "quotes": "quotes",
        "quotes.reply": None,
        "audits": "audits",
        "blobs": "blobs",
        "notes": "notes",
    }
    assert channels["orders._star_"]["x-messagebus-pattern"] is True
    assert "pattern" in channels["orders._star_"]["description"]
    assert set(operations) == {
        "receive.orders.created.pricing",
        "receive.orders._star_.audit",
        "receive.payments._hash_.audit",
        "receive.quotes",
        "receive.audits",
        "send.orders.created",
        "send.quotes",
        "send.blobs",
        "send.notes",
    }
    created = operations["receive.orders.created.pricing"]
    assert created["action"] == "receive"
    assert created["x-messagebus-group"] == "pricing"
    assert created["x-messagebus-filter"] == {"region": "eu"}
    assert "region=eu" in created["description"]
    assert "on_order" in created["description"]
    assert "dead-lettered to queue 'orders.created.pricing.dlq'" in created["description"]
    assert "batches of up to 10" in operations["receive.audits"]["description"]
    assert created["messages"] == [{"$ref": "#/channels/orders.created/messages/Order"}]
    assert operations["receive.orders._star_.audit"]["x-messagebus-group"] == "audit"
    assert operations["send.orders.created"]["action"] == "send"
    assert operations["send.quotes"]["messages"] == [{"$ref": "#/channels/quotes/messages/PriceRequest"}]
    reply = operations["receive.quotes"]["reply"]
    assert reply["channel"] == {"$ref": "#/channels/quotes.reply"}
    assert reply["address"] == {"location": "$message.header#/messagebus-reply-to"}
    assert reply["messages"] == [{"$ref": "#/channels/quotes.reply/messages/Quote"}]
    assert "reply" not in operations["receive.audits"] and "reply" not in created
    messages, schemas = doc["components"]["messages"], doc["components"]["schemas"]
    assert messages["Order"]["payload"] == {"$ref": "#/components/schemas/Order"}
    assert messages["Audit"]["payload"] == {"$ref": "#/components/schemas/Audit"}
    assert messages["Any"]["payload"] == {}
    assert messages["Order"]["contentType"] == "application/json"
    assert messages["bytes"]["contentType"] == "application/octet-stream"
    assert messages["str"]["contentType"] == "text/plain; charset=utf-8"
    assert schemas["Quote"]["properties"]["lines"]["items"] == {"$ref": "#/components/schemas/Line"}
    assert set(schemas["Order"]["required"]) == {"order_id", "total"}
    headers = schemas["CloudEventsHeaders"]
    assert messages["Order"]["headers"] == {"$ref": "#/components/schemas/CloudEventsHeaders"}
    assert set(headers["properties"]) == {"ce-id", "ce-source", "ce-type", "ce-specversion", "ce-time", "content-type"}
    assert "servers" not in doc and "in the process" in doc["info"]["description"]


@pytest.mark.parametrize(
    ("url", "secrets", "server"),
    [
        (
            "amqp://alice:s3cret-pw@rabbit.example:5671/shop?heartbeat=30",
            ["alice", "s3cret-pw"],
            {"host": "rabbit.example:5671", "protocol": "amqp", "pathname": "/shop"},
        ),
        (
            "nats://bob:pw-2@nats.example:4222?token=tok-123&name=svc",
            ["bob", "pw-2", "tok-123"],
            {"host": "nats.example:4222", "protocol": "nats"},
        ),
        (
            "kafka://carol:kpw-3@k1:9092,k2:9093?security_protocol=SASL_PLAINTEXT&sasl_mechanism=PLAIN",
            ["carol", "kpw-3"],
            {"host": "k1:9092", "protocol": "kafka"},
        ),
    ],
)
def test_credentials_never_in_the_document(url: str, secrets: list[str], server: dict[str, str]) -> None:
    """Bug caught: a user name, password or secret query option (token) copied into the
    server of a document that gets published; options that are not secrets lost."""
    doc = asyncapi_document(_small_bus(url))
    text = json.dumps(doc)
    for secret in secrets:
        assert secret not in text
    first = doc["servers"]["broker"]
    assert {k: first[k] for k in server} == server
    options = first.get("x-messagebus-options", {})
    assert "token" not in options
    if "heartbeat" in url:
        assert options == {"heartbeat": "30"}
    if "k2:9093" in url:
        assert doc["servers"]["broker-2"]["host"] == "k2:9093"
        assert options["sasl_mechanism"] == "PLAIN"


@pytest.mark.parametrize(
    ("url", "protocol"),
    [("sqs://localhost:4566?region=eu-west-1", "sqs"), ("pubsub://localhost:8085?project=shop", "googlepubsub")],
)
def test_server_protocol_is_asyncapi_s_name_for_the_scheme(url: str, protocol: str) -> None:
    """Bug caught: the URL scheme written as the protocol where AsyncAPI names it otherwise
    (pubsub is googlepubsub), which tools then do not recognise."""
    servers, _ = _servers(TransportURL.parse(url))
    assert servers["broker"]["protocol"] == protocol


def test_user_names_and_secret_options_are_dropped_and_others_kept() -> None:
    """Bug caught: a user name or password given as a query option (Kafka's sasl_username,
    sasl_password) written into the document."""
    url = "kafka://k:9092?sasl_username=dave&sasl_password=pw-9&api_key=k-1&client_id=shop&ssl_keyfile=/k.pem"
    servers, _ = _servers(TransportURL.parse(url))
    assert servers["broker"]["x-messagebus-options"] == {"client_id": "shop", "ssl_keyfile": "/k.pem"}


async def test_declarations_change_nothing_at_run_time() -> None:
    """Bug caught: bus.publishes/bus.sends turned into a check (refusing an undeclared topic
    or type) or refused once the bus runs, though they are documentation only."""
    bus = _small_bus()
    async with bus:
        bus.publishes("later", Quote)
        await bus.publish("undeclared", Audit(what="x"))
        await bus.publish("orders.created", Audit(what="not an Order"))
    assert "send.later" in asyncapi_document(bus)["operations"]


def test_yaml_and_json_are_the_same_document() -> None:
    """Bug caught: YAML output that differs from JSON (a version string read back as a
    number, a null address lost, keys reordered into another document)."""
    doc = asyncapi_document(_small_bus("amqp://localhost/"))
    assert yaml.safe_load(render(doc, "yaml")) == json.loads(render(doc, "json")) == doc
    assert render(doc, "yaml").startswith("asyncapi: 3.0.0\ninfo:")
    with pytest.raises(ValueError, match="expected json or yaml"):
        render(doc, "xml")


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "asyncapi_service.py").write_text(
        "from messagebus import Bus\n"
        "from pydantic import BaseModel\n"
        "class Ping(BaseModel):\n    n: int\n"
        "bus = Bus.from_url('redis://u:hunter2@localhost:6379/0', service='pinger')\n"
        "@bus.consume('pings')\nasync def ping(p: Ping) -> Ping:\n    return p\n"
        "def make(): return bus\n"
        "not_a_bus = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return "asyncapi_service"


def test_cli_writes_json_or_yaml_and_exits_2_on_usage_errors(
    service: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: the command not registered, a format not inferred from the output file,
    a traceback (or exit 0) instead of exit 2 for a bad MODULE:ATTR, an unwritable file,
    or YAML without PyYAML."""
    assert main(["asyncapi", f"{service}:bus", "--title", "Pinger", "--version", "3.0.1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["info"] == {"title": "Pinger", "version": "3.0.1", "description": out["info"]["description"]}
    assert out["servers"]["broker"]["protocol"] == "redis"
    assert "hunter2" not in json.dumps(out)
    assert main(["asyncapi", f"{service}:make", "--output", "api.yaml"]) == 0
    assert Path("api.yaml").read_text().startswith("asyncapi: 3.0.0\n")
    assert yaml.safe_load(Path("api.yaml").read_text())["operations"]["receive.pings"]["reply"]
    assert main(["asyncapi", f"{service}:bus", "-o", "api.txt", "--format", "yaml"]) == 0
    assert yaml.safe_load(Path("api.txt").read_text()) == yaml.safe_load(Path("api.yaml").read_text())
    capsys.readouterr()
    assert main(["asyncapi", f"{service}:not_a_bus"]) == 2
    assert "not a messagebus.Bus" in capsys.readouterr().err
    assert main(["asyncapi", f"{service}:bus", "-o", "no/such/dir/api.json"]) == 2
    assert "cannot write" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert main(["asyncapi", f"{service}:bus", "--format", "yaml"]) == 2
    assert "messagebus[asyncapi]" in capsys.readouterr().err
    assert main(["asyncapi", f"{service}:bus", "--format", "json"]) == 0
    with pytest.raises(SystemExit) as exit:
        main(["asyncapi", f"{service}:bus", "--format", "xml"])
    assert exit.value.code == 2
