"""``memory://``: the contract, on the in-process store (the test double)."""

from __future__ import annotations

import typing as t
from pathlib import Path

from sse_notify.brokers import Broker, MemoryBroker

from .contract import BrokerContract


class TestMemoryBroker(BrokerContract):
    durable = False
    shared = False

    def create(self, store_dir: Path, **options: t.Any) -> Broker:
        return MemoryBroker(**options)
