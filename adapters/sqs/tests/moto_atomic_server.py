"""moto's server with an atomic ReceiveMessage: ``python moto_atomic_server.py -H HOST -p PORT``.

moto 5.2 scans a queue and marks messages received without a lock, while its server runs
requests on parallel threads: two consumers polling at the same moment can both take the
same message. Real SQS hands a received message to one receiver until its visibility
timeout ends, which is what the conformance kit's competing-consumer test checks, so the
test server makes each receive atomic (a long poll is kept, as short polls 20 ms apart
outside the lock). Nothing on the client side is touched.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from moto.server import main
from moto.sqs.models import SQSBackend

_lock = threading.Lock()
_receive = SQSBackend.receive_message


def _atomic_receive(
    self: SQSBackend,
    queue_name: str,
    count: int,
    wait_seconds_timeout: int,
    visibility_timeout: int,
    message_attribute_names: list[str] | None = None,
) -> Any:
    deadline = time.monotonic() + wait_seconds_timeout
    while True:
        with _lock:
            result = _receive(self, queue_name, count, 0, visibility_timeout, message_attribute_names)
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(0.02)  # long-poll wait between atomic scans, outside the lock


SQSBackend.receive_message = _atomic_receive  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
