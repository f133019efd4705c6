"""Testing helpers: fixtures, broker helpers, a fault-injecting TCP proxy, the conformance kit."""

from ._brokers import brokers_required, free_port, missing_broker, wait_for_port
from ._proxy import TcpProxy

__all__ = ["TcpProxy", "brokers_required", "free_port", "missing_broker", "wait_for_port"]
