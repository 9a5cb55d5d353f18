"""The live-event buffer: increasing ids, bounded replay with gap detection, per-session
filtering, and clients that do not read being dropped without ever blocking a publisher."""

from __future__ import annotations

from service.runner.events import EventHub


async def test_ids_increase_and_replay_follows_last_event_id() -> None:
    hub = EventHub(capacity=10, first_id=100)
    published = [hub.publish("status", "a", {"n": i}) for i in range(5)]
    assert [e.id for e in published] == [100, 101, 102, 103, 104]
    assert hub.last_id == 104
    assert published[0].data["type"] == "status" and published[0].data["session_id"] == "a"
    assert "time" in published[0].data
    resumed = hub.subscribe(last_event_id=101)
    assert resumed.gap is None
    assert [e.id for e in resumed.backlog] == [102, 103, 104]
    fresh = hub.subscribe()  # no Last-Event-ID: live events only
    assert fresh.backlog == [] and fresh.gap is None
    hub.publish("status", "a", {})
    assert resumed.queue.get_nowait().id == fresh.queue.get_nowait().id == 105


async def test_a_client_too_far_behind_gets_a_gap() -> None:
    hub = EventHub(capacity=3, first_id=1)
    for i in range(6):
        hub.publish("created", f"s{i}", {})
    late = hub.subscribe(last_event_id=1)  # 2 and 3 are gone; 4, 5, 6 are buffered
    assert late.gap == (1, 4)
    assert [e.id for e in late.backlog] == [4, 5, 6]
    assert hub.subscribe(last_event_id=3).gap is None  # the next one (4) is still there
    # An id this run never gave (from before a restart with a clock that went back).
    future = hub.subscribe(last_event_id=1000)
    assert future.gap == (1000, 4) and [e.id for e in future.backlog] == [4, 5, 6]


async def test_per_session_subscriptions_see_their_session_only() -> None:
    hub = EventHub(first_id=1)
    mine = hub.subscribe(session_id="a")
    hub.publish("created", "b", {})
    hub.publish("created", "a", {})
    assert mine.queue.qsize() == 1 and mine.queue.get_nowait().session_id == "a"
    assert [e.session_id for e in hub.subscribe("b", last_event_id=0).backlog] == ["b"]


async def test_a_client_that_does_not_read_is_dropped() -> None:
    hub = EventHub(queue_size=2, first_id=1)
    stuck, reader = hub.subscribe(), hub.subscribe()
    for _ in range(3):
        hub.publish("status", "a", {})  # never waits, whoever is subscribed
        reader.queue.get_nowait()
    assert stuck.dropped and not reader.dropped
    assert hub.dropped_clients == 1 and hub.subscribers == 1
    hub.publish("status", "a", {})
    assert stuck.queue.qsize() == 2  # no longer fed
    hub.unsubscribe(reader)
    assert hub.subscribers == 0
