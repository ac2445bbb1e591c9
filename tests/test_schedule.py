"""Scheduled notices: kept in the store's scheduler, published once when due, by whichever worker claims them.

The scheduler's store operations are in the store contract (tests/brokers/contract.py);
here is what the service and its workers do with them.
"""

from __future__ import annotations

import json
import time
import typing as t
from pathlib import Path

import pytest

from sse_notify.delivery import Options
from sse_notify.schedule import Due
from sse_notify.service import DUE_NOTICE, State, get_state

from .support import Server, standalone_app, wait_for


@pytest.fixture(name="state")
def _state(tmp_path: Path) -> t.Iterator[State]:
    app = standalone_app(f"sqlite:///{tmp_path}/notices.sqlite3")
    state = get_state(app)
    yield state
    state.broker.close()


def datas(state: State, user_id: str) -> list[dict[str, t.Any]]:
    """The data of every notice the store replays to ``user_id``, in order."""
    return [json.loads(n.data_json) for n in state.broker.replay(user_id, "0").notices]


def test_a_scheduled_notice_is_published_once_when_due(state: State) -> None:
    """Nothing is published before the due time; at it, the notice is, once."""
    state.deliver([("alice", {"n": 1}, Options(due=1000.0))])
    state.deliver([(None, {"n": 2}, Options(due=1001.0))])
    state.node.due.step(now=999.0)
    assert datas(state, "alice") == []
    state.node.due.step(now=1000.0)
    assert datas(state, "alice") == [{"n": 1}]
    state.node.due.step(now=5000.0)
    state.node.due.step(now=9000.0)
    assert datas(state, "alice") == [{"n": 1}, {"n": 2}]  # the broadcast too, and nothing twice
    assert state.broker.scheduled(DUE_NOTICE) == 0


def test_a_worker_killed_after_publishing_leaves_no_second_notice(state: State) -> None:
    """Published but not finished (the worker died): the next claim publishes nothing again."""
    state.deliver([("alice", {"n": 1}, Options(due=1000.0))])
    (claimed,) = state.broker.claim_due(1000.0, 10, state.node.due.lease)
    state.node.due.actions[DUE_NOTICE](claimed)  # published; then the worker is gone
    state.node.due.step(now=1000.0 + state.node.due.lease)  # the lease ran out: another worker
    assert datas(state, "alice") == [{"n": 1}]
    assert state.broker.scheduled(DUE_NOTICE) == 0


def test_a_failing_action_is_tried_again_after_its_lease(state: State) -> None:
    """An entry whose action fails is done by a later claim, once its lease ran out."""
    calls: list[str] = []

    def flaky(due: Due) -> None:
        calls.append(due.key)
        if len(calls) == 1:
            raise RuntimeError("the first try fails on purpose")

    state.node.due.actions["flaky"] = flaky
    state.broker.schedule("flaky", "k", 1000.0, "{}")
    state.node.due.step(now=1000.0)
    state.node.due.step(now=1000.0 + state.node.due.lease - 1)
    assert (calls, state.broker.scheduled("flaky")) == (["k"], 1)
    state.node.due.step(now=1000.0 + state.node.due.lease)
    assert (calls, state.broker.scheduled("flaky")) == (["k", "k"], 0)


def test_an_entry_of_an_unknown_kind_waits_for_a_worker_that_knows_it(state: State) -> None:
    """A kind this version has no action for is left in the store, not dropped."""
    state.broker.schedule("from-a-newer-version", "k", 1000.0, "{}")
    state.node.due.step(now=1000.0)
    assert state.broker.scheduled("from-a-newer-version") == 1


def test_a_bad_notice_is_refused_when_scheduled(state: State) -> None:
    """The notice is checked when it is scheduled, not when it falls due."""
    from sse_notify.errors import InvalidNotice

    with pytest.raises(InvalidNotice):
        state.deliver([("bad user id", {"n": 1}, Options(due=1000.0))])
    with pytest.raises(InvalidNotice):
        state.deliver([("alice", ["not", "an", "object"], Options(due=1000.0))])
    assert state.broker.scheduled(DUE_NOTICE) == 0


@pytest.mark.server
def test_four_workers_publish_each_due_notice_once_with_no_stream_open(
    make_server: t.Callable[..., Server],
) -> None:
    """Under -w 4, with no stream open anywhere, every due notice is published exactly once."""
    server = make_server(workers=4)
    app = standalone_app(f"sqlite:///{server.store}")
    state = get_state(app)
    try:
        due = time.time() + 0.5
        for n in range(40):
            state.deliver([("alice", {"n": n}, Options(due=due + n * 0.01))])
        got = wait_for(lambda: len(datas(state, "alice")) >= 40 and datas(state, "alice"), 10, "40 notices")
        time.sleep(1)  # room for a second publish of any of them, which must not come
        assert datas(state, "alice") == got
        # Each once. Notices due 10 ms apart may be claimed by different workers and published in
        # either order: no order among them is promised.
        assert sorted(got, key=lambda data: data["n"]) == [{"n": n} for n in range(40)]
        assert state.broker.scheduled(DUE_NOTICE) == 0
    finally:
        state.broker.close()


@pytest.mark.server
def test_what_fell_due_while_no_server_ran_is_published_at_start(
    tmp_path: Path, make_server: t.Callable[..., Server]
) -> None:
    """A notice due while the server was down is published when a worker starts, no stream needed."""
    store = tmp_path / "notices.sqlite3"
    app = standalone_app(f"sqlite:///{store}")
    state = get_state(app)
    try:
        state.deliver([("alice", {"n": 1}, Options(due=time.time() - 60))])
        make_server(store=str(store))
        wait_for(lambda: datas(state, "alice") == [{"n": 1}], 10, "the overdue notice")
    finally:
        state.broker.close()
