"""Spans of the SQS transport: SNS topics are ``aws.sns``, SQS queues ``aws_sqs``."""

from messagebus import Bus
from messagebus.testing import Collector
from messagebus.testing.telemetry import capture_telemetry


async def test_send_spans_name_the_aws_service(sqs_url: str) -> None:
    bus = Bus.from_url(sqs_url, service="tel")
    got: Collector[int] = Collector(30)

    @bus.subscribe("tel.orders")
    async def handle(n: int) -> None:
        got.add(n)

    with capture_telemetry() as telemetry:
        async with bus:
            await bus.publish("tel.orders", 1)
            await bus.send("tel.jobs", 2)
            await got.wait_for(1)
            await telemetry.wait_for_span(lambda s: s.name == "process tel.orders", what="the process span")
        spans = {s.name: s for s in telemetry.spans()}
    assert spans["send tel.orders"].attributes is not None
    assert spans["send tel.orders"].attributes["messaging.system"] == "aws.sns"
    assert spans["send tel.jobs"].attributes is not None
    assert spans["send tel.jobs"].attributes["messaging.system"] == "aws_sqs"
    process = spans["process tel.orders"].attributes
    assert process is not None
    assert process["messaging.system"] == "aws_sqs"
