"""The in-process batching server (``ega_infer.serving.server``) and its result cache.

Results are checked against ``Engine.generate`` on the tiny model. The batching policy is
checked with a probe engine (an ``Engine`` subclass whose ``generate`` records each batch and
can be held at a gate): "queued behind a running batch" is then a fact, not a race. Assertions
are on batch composition, counts and order; time appears only as lower bounds (a wait cannot
be shorter than asked on any machine) or as generous upper bounds where a property is about
not waiting a long ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from ega_infer import DecodeConfig, Engine, GenerativeAdModel, Request
from ega_infer.exceptions import CheckpointError, ConfigError, ConfigFileError, QueueFullError, ServerClosedError
from ega_infer.serving import ResultCache, Server
from ega_infer.serving.server import ServerOptions, is_deadline_error
from ega_infer.slate import Candidate, Slate
from ega_infer.testing import synthetic_catalog, synthetic_requests

CFG = DecodeConfig(beams=(4,), num_slots=3)
OTHER_CFG = DecodeConfig(beams=(2,), num_slots=3)
WAIT_S = 30.0  # how long a test waits on a future or a gate before it calls the server stuck


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The machine is shared: one intra-op thread (restored after this module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base() -> Engine:
    """The tiny engine with the test catalog; shared, so tests only read it (a test that
    updates a catalog or weights builds its own engine on the same model)."""
    engine = Engine.from_pretrained("tiny")
    engine.set_catalog(synthetic_catalog(engine.config, n_items=200, seed=1))
    return engine


@pytest.fixture(scope="module")
def requests(base) -> list[Request]:
    return synthetic_requests(base.catalog, base.config, n=32, seed=3)


@pytest.fixture(scope="module")
def expected(base, requests) -> list[Slate]:
    """``Engine.generate``'s slates of ``requests`` (one batch) with ``CFG``."""
    return base.generate(requests, CFG)


def fresh_engine(base: Engine) -> Engine:
    """An engine of its own (for catalog and weight updates) on the tiny model, with the catalog."""
    engine = Engine(base.model, default_config=base.default_config)
    engine.set_catalog(base.catalog)
    return engine


@dataclasses.dataclass
class Call:
    ids: list[str]
    config: DecodeConfig
    queue_depth: int
    start: float
    end: float = math.nan


class ProbeEngine(Engine):
    """Records every batch ``generate`` gets; ``hold()`` makes the next batch wait in the engine
    until ``release()``. ``fake=True``: a fake result per request (its candidates name the call
    number, so a cache hit is told from a fresh computation); ``fake=False``: the real one.
    ``fail(ids)`` True makes a batch raise RuntimeError."""

    def __init__(self, model, *, fake: bool = True, delay_s: float = 0.0, fail=None, **kw) -> None:
        super().__init__(model, **kw)
        self.fake, self.delay_s, self.fail = fake, delay_s, fail
        self.calls: list[Call] = []
        self.entered = threading.Event()
        self._gate: threading.Event | None = None
        self._held: list[threading.Event] = []

    def hold(self) -> None:
        self.entered.clear()
        self._gate = threading.Event()
        self._held.append(self._gate)

    def release(self) -> None:
        for gate in self._held:
            gate.set()

    def generate(self, requests, config=None, catalog=None, queue_depth=0):
        call = Call([getattr(r, "request_id", "") for r in requests], config, queue_depth, time.monotonic())
        number = len(self.calls)
        self.calls.append(call)
        gate, self._gate = self._gate, None
        self.entered.set()
        if gate is not None:
            assert gate.wait(WAIT_S), "the test never released the held batch"
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            if self.fail is not None and self.fail(call.ids):
                raise RuntimeError("boom")
            if not self.fake:
                return super().generate(requests, config, catalog, queue_depth)
            schedule = self.check_config(config).beams
            return [Slate(getattr(r, "request_id", ""), candidates=(Candidate((number,), -1.0),),
                          catalog_version=self.catalog_version, model_version=self.model_version,
                          beam_schedule=schedule) for r in requests]
        finally:
            call.end = time.monotonic()

    def ids(self) -> list[list[str]]:
        return [c.ids for c in self.calls]


@pytest.fixture
def fake(base) -> ProbeEngine:
    return ProbeEngine(base.model, default_config=CFG)


@pytest.fixture
def make_server():
    """Servers built by a test are closed (and their held batches released) after it."""
    made: list[Server] = []

    def make(engine, **kw) -> Server:
        server = Server(engine, **kw)
        made.append(server)
        return server

    yield make
    for server in made:
        if isinstance(server.engine, ProbeEngine):
            server.engine.release()
        server.close(drain=False, timeout=WAIT_S)
        assert not server._thread.is_alive()


def req(i: int, rid: str | None = None) -> Request:
    """A request for the fake engine: content (and so cache key) differs per ``i``."""
    return Request(history_poi_codes=[[i % 32, i // 32 % 32, 0]], request_id=f"r{i}" if rid is None else rid)


def hold_first(server: Server, engine: ProbeEngine, request: Request | None = None, **kw):
    """Submit a request to an idle server and return its future once its batch is held in the
    engine: what is submitted next queues behind a running batch."""
    engine.hold()
    future = server.submit(req(0) if request is None else request, **kw)
    assert engine.entered.wait(WAIT_S), "the idle server did not dispatch"
    return future


def wait_for(predicate, timeout: float = WAIT_S) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def same_result(a: Slate, b: Slate) -> bool:
    return a.ok and b.ok and a.slots == b.slots and a.candidates == b.candidates


# -- 1. slates equal Engine.generate's -----------------------------------------------------------
def test_concurrent_submits_get_the_engines_slates(make_server, base, requests, expected):
    server = make_server(base, torch_threads=1)
    with ThreadPoolExecutor(8) as pool:
        futures = list(pool.map(lambda r: server.submit(r, CFG), requests))
    slates = [f.result(WAIT_S) for f in futures]
    for request, slate, want in zip(requests, slates, expected):
        assert slate.request_id == request.request_id
        assert same_result(slate, want), request.request_id
        assert slate.queue_ms >= 0 and slate.cache_hit is False
        assert slate.catalog_version == base.catalog_version == "1"
        assert slate.model_version == base.model_version == "1"
        assert slate.beam_schedule == want.beam_schedule
    stats = server.stats()
    assert stats["submitted"] == stats["served"] == 32 and stats["errors"] == stats["deadline"] == 0
    assert sum(size * count for size, count in stats["batch_sizes"].items()) == 32
    assert stats["queue_depth"] == 0


# -- 2. the batching policy ----------------------------------------------------------------------
def test_an_idle_server_dispatches_a_lone_request_without_waiting(make_server, fake):
    server = make_server(fake, max_wait_ms=2000)
    start = time.monotonic()
    slate = server.submit(req(0)).result(WAIT_S)
    assert slate.ok and slate.request_id == "r0"
    assert time.monotonic() - start < 1.5  # max_wait_ms is 2 s: it did not wait for company
    assert fake.ids() == [["r0"]]


def test_requests_queued_behind_a_running_batch_are_merged(make_server, fake):
    server = make_server(fake, max_batch_size=4, preferred_batch_sizes=(4,), max_wait_ms=50)
    first = hold_first(server, fake)
    futures = [server.submit(req(i)) for i in range(1, 8)]
    assert server.queue_depth == 7
    time.sleep(0.1)
    fake.release()
    slates = [f.result(WAIT_S) for f in [first, *futures]]
    assert [s.request_id for s in slates] == [f"r{i}" for i in range(8)]
    assert all(s.ok for s in slates)
    assert [len(ids) for ids in fake.ids()] == [1, 4, 3]  # merged, never above max_batch_size
    assert [i for ids in fake.ids() for i in ids] == [f"r{i}" for i in range(8)]  # first in, first out
    assert all(s.queue_ms >= 100 for s in slates[1:])  # they waited behind the held batch
    stats = server.stats()
    assert stats["batch_sizes"] == {1: 1, 3: 1, 4: 1} and stats["mean_batch_size"] == pytest.approx(8 / 3)


def test_queue_depth_given_to_the_engine_is_what_still_waits(make_server, fake):
    server = make_server(fake, max_batch_size=4, preferred_batch_sizes=(4,), max_wait_ms=20)
    first = hold_first(server, fake)
    futures = [server.submit(req(i)) for i in range(1, 7)]
    fake.release()
    for f in [first, *futures]:
        assert f.result(WAIT_S).ok
    assert [len(c.ids) for c in fake.calls] == [1, 4, 2]
    assert [c.queue_depth for c in fake.calls] == [0, 2, 0]


def test_a_batch_waits_max_wait_ms_for_a_preferred_size_then_goes(make_server, fake):
    server = make_server(fake, preferred_batch_sizes=(8,), max_wait_ms=200)
    first = hold_first(server, fake)
    futures = [server.submit(req(i)) for i in range(1, 4)]
    fake.release()
    for f in [first, *futures]:
        assert f.result(WAIT_S).ok
    assert fake.ids() == [["r0"], ["r1", "r2", "r3"]]  # one batch of 3, after the wait
    # the wait counts from when the engine freed up: never shorter than max_wait_ms
    assert fake.calls[1].start - fake.calls[0].end >= 0.2 - 1e-3


def test_a_batch_that_fills_max_batch_size_goes_at_once(make_server, fake):
    server = make_server(fake, max_batch_size=4, max_wait_ms=5000)
    first = hold_first(server, fake)
    futures = [server.submit(req(i)) for i in range(1, 5)]
    fake.release()
    for f in [first, *futures]:
        assert f.result(WAIT_S).ok
    assert fake.ids() == [["r0"], ["r1", "r2", "r3", "r4"]]
    assert fake.calls[1].start - fake.calls[0].end < 2.5  # max_wait_ms is 5 s


def test_requests_of_different_configs_never_share_a_batch(make_server, fake):
    server = make_server(fake, max_wait_ms=20)
    first = hold_first(server, fake, config=CFG)
    config_of = {"r0": CFG}
    futures = [first]
    for i in range(1, 7):
        config = CFG if i % 2 else OTHER_CFG
        config_of[f"r{i}"] = config
        futures.append(server.submit(req(i), config))
    fake.release()
    slates = [f.result(WAIT_S) for f in futures]
    assert all(s.ok for s in slates)
    for call in fake.calls:
        assert all(config_of[i] == call.config for i in call.ids)
    assert fake.ids() == [["r0"], ["r1", "r3", "r5"], ["r2", "r4", "r6"]]
    assert [c.queue_depth for c in fake.calls] == [0, 3, 0]  # requests of the other config wait too
    assert [s.beam_schedule for s in slates] == [config_of[s.request_id].beams for s in slates]


def test_submit_many_keeps_its_body_in_one_batch(make_server, fake):
    server = make_server(fake, max_batch_size=4, preferred_batch_sizes=(4,), max_wait_ms=20)
    first = hold_first(server, fake)
    singles = [server.submit(req(1)), server.submit(req(2))]
    body = server.submit_many([req(10), req(11), req(12)])
    last = server.submit(req(3))
    fake.release()
    for f in [first, *singles, *body, last]:
        assert f.result(WAIT_S).ok
    assert [f.result().request_id for f in body] == ["r10", "r11", "r12"]
    # 2 + 3 would pass max_batch_size 4: the body goes whole in the next batch
    assert fake.ids() == [["r0"], ["r1", "r2"], ["r10", "r11", "r12", "r3"]]


def test_submit_many_is_admitted_all_or_none(make_server, fake):
    server = make_server(fake, max_batch_size=4, max_queue=4, max_wait_ms=20)
    first = hold_first(server, fake)
    queued = [server.submit(req(1)), server.submit(req(2))]
    with pytest.raises(QueueFullError):
        server.submit_many([req(10), req(11), req(12)])  # 2 + 3 > max_queue 4: none of them
    assert server.queue_depth == 2 and server.stats()["rejected"] == 3
    queued += server.submit_many([req(20), req(21)])  # 2 + 2 fits
    with pytest.raises(ConfigError) as err:
        server.submit_many([req(i) for i in range(30, 35)])  # more than max_batch_size
    assert err.value.field == "requests"
    with pytest.raises(ConfigError) as err:
        server.submit_many([])
    assert err.value.field == "requests"
    fake.release()
    for f in [first, *queued]:
        assert f.result(WAIT_S).ok
    served = [i for ids in fake.ids() for i in ids]
    assert sorted(served) == ["r0", "r1", "r2", "r20", "r21"]
    assert server.stats()["submitted"] == 5


def test_a_cancelled_queued_request_is_not_served(make_server, fake):
    server = make_server(fake, max_wait_ms=0)
    first = hold_first(server, fake)
    gone, kept = server.submit(req(1)), server.submit(req(2))
    assert gone.cancel()
    fake.release()
    assert first.result(WAIT_S).ok and kept.result(WAIT_S).ok
    assert "r1" not in [i for ids in fake.ids() for i in ids]


def test_a_listener_sees_each_batch_and_its_errors_are_swallowed(make_server, fake):
    server = make_server(fake)
    seen = []
    server.add_listener(lambda size, slates: seen.append((size, [s.request_id for s in slates])))
    server.add_listener(lambda size, slates: 1 / 0)
    assert server.submit(req(0)).result(WAIT_S).ok
    assert server.submit_many([req(1), req(2)])[1].result(WAIT_S).ok
    wait_for(lambda: len(seen) == 2)
    assert seen == [(1, ["r0"]), (2, ["r1", "r2"])]
    assert server._thread.is_alive()


# -- 3. deadlines --------------------------------------------------------------------------------
def test_a_request_past_its_deadline_in_the_queue_gets_a_deadline_error(make_server, fake):
    server = make_server(fake, max_wait_ms=0)
    first = hold_first(server, fake)
    late = server.submit(req(1), deadline_ms=50)
    on_time = server.submit(req(2), deadline_ms=60_000)
    time.sleep(0.15)
    fake.release()
    slate = late.result(WAIT_S)
    assert is_deadline_error(slate) and slate.error.startswith("deadline_ms:")
    assert slate.request_id == "r1" and not slate.slots and slate.queue_ms >= 50
    assert first.result(WAIT_S).ok and on_time.result(WAIT_S).ok
    assert fake.ids() == [["r0"], ["r2"]]  # the late one never reached the engine
    stats = server.stats()
    assert stats["deadline"] == 1 and stats["served"] == 2


def test_the_default_deadline_applies_to_requests_that_give_none(make_server, fake):
    server = make_server(fake, max_wait_ms=0, default_deadline_ms=50)
    first = hold_first(server, fake, deadline_ms=60_000)
    late = server.submit(req(1))
    own = server.submit(req(2), deadline_ms=60_000)  # its own deadline wins
    time.sleep(0.15)
    fake.release()
    assert is_deadline_error(late.result(WAIT_S))
    assert first.result(WAIT_S).ok and own.result(WAIT_S).ok
    assert fake.ids() == [["r0"], ["r2"]]


def test_a_batch_that_finishes_past_the_deadline_answers_with_deadline_errors(make_server, fake):
    server = make_server(fake)
    submitted = time.monotonic()
    future = hold_first(server, fake, deadline_ms=1000)  # in the engine well within its deadline
    other = server.submit(req(1))  # no deadline: served whatever the wait
    time.sleep(max(0.0, submitted + 1.1 - time.monotonic()))
    fake.release()
    slate = future.result(WAIT_S)
    assert is_deadline_error(slate) and slate.request_id == "r0" and not slate.candidates
    assert slate.queue_ms >= 1000
    assert fake.ids()[0] == ["r0"]  # it was computed, just too late
    assert other.result(WAIT_S).ok
    assert server.stats()["deadline"] == 1


BAD_DEADLINES = [0, -1, float("nan"), float("inf"), "5", True, 3_600_001]


@pytest.mark.parametrize("deadline", BAD_DEADLINES, ids=repr)
def test_a_bad_deadline_raises_config_error(make_server, fake, deadline):
    server = make_server(fake)
    with pytest.raises(ConfigError) as err:
        server.submit(req(0), deadline_ms=deadline)
    assert err.value.field == "deadline_ms"
    with pytest.raises(ConfigError) as err:
        ServerOptions(default_deadline_ms=deadline)
    assert err.value.field == "default_deadline_ms"
    assert server.stats()["submitted"] == 0 and fake.calls == []


# -- 4. backpressure -----------------------------------------------------------------------------
def test_past_max_queue_submits_raise_queue_full_at_once(make_server, fake):
    server = make_server(fake, max_queue=4, max_wait_ms=0)
    first = hold_first(server, fake)
    queued = [server.submit(req(i)) for i in range(1, 5)]
    for i in (5, 6):
        start = time.monotonic()
        with pytest.raises(QueueFullError):
            server.submit(req(i))
        assert time.monotonic() - start < 1.0  # raised, not queued nor waited on
    assert server.queue_depth == 4 and server.stats()["rejected"] == 2
    fake.release()
    slates = [f.result(WAIT_S) for f in [first, *queued]]
    assert all(s.ok for s in slates) and [s.request_id for s in slates] == [f"r{i}" for i in range(5)]
    assert sorted(i for ids in fake.ids() for i in ids) == [f"r{i}" for i in range(5)]
    queued_again = server.submit(req(7))  # the queue drained: admitted again
    assert queued_again.result(WAIT_S).ok
    stats = server.stats()
    assert stats["rejected"] == 2 and stats["submitted"] == 6 and stats["served"] == 6


# -- 5. a bad request fails alone ----------------------------------------------------------------
def test_a_bad_request_fails_alone_naming_its_index_in_its_call(make_server, base, requests, expected):
    engine = ProbeEngine(base.model, fake=False, default_config=base.default_config)
    engine.set_catalog(base.catalog)
    server = make_server(engine, max_wait_ms=20)
    first = hold_first(server, engine, requests[0], config=CFG)
    bad_codes = Request(history_poi_codes=[[1, 40, 2]], organic_items=requests[0].organic_items, request_id="bad")
    one = server.submit_many([requests[1], requests[2]], CFG)
    two = server.submit_many([requests[3], bad_codes, object()], CFG)
    engine.release()
    slates = [f.result(WAIT_S) for f in [first, *one, *two]]
    # merged into one batch, where the bad ones are requests[3] and [4]: errors name their call's index
    assert engine.ids() == [["req-0"], ["req-1", "req-2", "req-3", "bad", ""]]
    for i in range(4):
        assert slates[i].request_id == f"req-{i}" and same_result(slates[i], expected[i])
    assert slates[4].request_id == "bad" and not slates[4].slots
    assert slates[4].error.startswith("requests[1].history_poi_codes"), slates[4].error
    assert slates[5].request_id == "" and slates[5].error.startswith("requests[2].request"), slates[5].error
    assert server.stats()["errors"] == 2 and server.stats()["served"] == 4


def test_bool_codes_are_refused_by_the_server(make_server, base, requests):
    server = make_server(base)
    organic = requests[0].organic_items
    request = Request(history_poi_codes=np.array([[True, False, True]]), organic_items=organic)
    slate = server.submit(request, CFG).result(WAIT_S)
    assert slate.error.startswith("requests[0].history_poi_codes"), slate.error


# -- 6. an engine failure fails its batch only ---------------------------------------------------
def test_an_engine_failure_fails_only_its_batch(make_server, base):
    engine = ProbeEngine(base.model, default_config=CFG, fail=lambda ids: "boom" in ids)
    server = make_server(engine, max_wait_ms=0)
    engine.hold()
    failing = server.submit_many([req(0, "boom"), req(1)])
    assert engine.entered.wait(WAIT_S)
    queued = server.submit(req(2))
    engine.release()
    for f, rid in zip(failing, ["boom", "r1"]):
        slate = f.result(WAIT_S)
        assert slate.request_id == rid and not slate.ok and not slate.slots
        assert "RuntimeError: boom" in slate.error and not is_deadline_error(slate)
    assert queued.result(WAIT_S).ok
    assert server._thread.is_alive()
    assert server.submit(req(3)).result(WAIT_S).ok
    stats = server.stats()
    assert stats["errors"] == 2 and stats["served"] == 2
    assert engine.ids() == [["boom", "r1"], ["r2"], ["r3"]]


def test_an_engine_without_a_catalog_answers_each_request_with_the_field(make_server, base):
    server = make_server(Engine(base.model, default_config=CFG))
    slates = [f.result(WAIT_S) for f in server.submit_many([req(0), req(1)])]
    assert all(s.error.startswith("catalog:") for s in slates), slates[0].error
    assert server.submit(req(2)).result(WAIT_S).error.startswith("catalog:")  # and it keeps serving


# -- 7. close --------------------------------------------------------------------------------------
def _close_in_background(server: Server, drain: bool) -> threading.Thread:
    thread = threading.Thread(target=server.close, kwargs=dict(drain=drain, timeout=WAIT_S))
    thread.start()
    wait_for(lambda: server._closing)
    return thread


def test_close_with_drain_serves_what_is_queued(make_server, fake):
    server = make_server(fake, max_wait_ms=5000)
    first = hold_first(server, fake)
    queued = [server.submit(req(i)) for i in range(1, 4)]
    closing = _close_in_background(server, drain=True)
    with pytest.raises(ServerClosedError):
        server.submit(req(9))
    with pytest.raises(ServerClosedError):
        server.submit_many([req(10)])
    fake.release()
    closing.join(WAIT_S)
    assert not closing.is_alive() and not server._thread.is_alive()
    assert all(f.result(0).ok for f in [first, *queued])
    assert fake.ids() == [["r0"], ["r1", "r2", "r3"]]  # closing releases a batch without the wait


def test_close_without_drain_answers_queued_requests_with_an_error(make_server, fake):
    server = make_server(fake, max_wait_ms=0)
    first = hold_first(server, fake)
    queued = [server.submit(req(i)) for i in range(1, 4)]
    closing = _close_in_background(server, drain=False)
    fake.release()
    closing.join(WAIT_S)
    assert not server._thread.is_alive()
    assert first.result(0).ok  # the running batch finishes
    for f, i in zip(queued, range(1, 4)):
        slate = f.result(0)
        assert slate.request_id == f"r{i}" and not slate.ok and "closed" in slate.error
    assert fake.ids() == [["r0"]]
    with pytest.raises(ServerClosedError):
        server.submit(req(9))


def test_context_manager_closes(fake):
    with Server(fake) as server:
        assert server.submit(req(0)).result(WAIT_S).ok
    assert not server._thread.is_alive()
    with pytest.raises(ServerClosedError):
        server.submit(req(1))


# -- 8. the result cache -------------------------------------------------------------------------
def test_a_repeated_request_is_a_cache_hit(make_server, base, requests, expected):
    cache = ResultCache(ttl_s=60)
    server = make_server(base, cache=cache)
    first = server.submit(requests[0], CFG).result(WAIT_S)
    again = server.submit(dataclasses.replace(requests[0], request_id="again"), CFG).result(WAIT_S)
    assert first.cache_hit is False and same_result(first, expected[0])
    assert again.cache_hit is True and again.request_id == "again" and same_result(again, first)
    assert again.catalog_version == first.catalog_version and again.model_version == first.model_version
    assert again.queue_ms == 0.0
    other_config = server.submit(dataclasses.replace(requests[0], request_id="other"), OTHER_CFG).result(WAIT_S)
    assert other_config.ok and other_config.cache_hit is False  # the config is part of the key
    assert cache.stats()["hits"] == 1 and server.stats()["cache_hits"] == 1
    assert cache.stats()["entries"] == 2


def test_identical_requests_in_flight_share_one_computation(make_server, fake):
    cache = ResultCache(ttl_s=60)
    server = make_server(fake, cache=cache, max_wait_ms=0)
    first = hold_first(server, fake, req(0))
    twin = server.submit(req(0, "twin"))  # while r0 is in the engine
    queued = [server.submit(req(1, rid)) for rid in ("a", "b", "c")]  # three of one content, queued
    assert server.queue_depth == 1
    fake.release()
    slates = [f.result(WAIT_S) for f in [first, twin, *queued]]
    assert [s.request_id for s in slates] == ["r0", "twin", "a", "b", "c"]
    assert all(s.ok for s in slates)
    assert fake.ids() == [["r0"], ["a"]]  # each content computed once
    assert [s.cache_hit for s in slates] == [False, True, False, True, True]
    assert slates[1].candidates == slates[0].candidates
    assert slates[3].candidates == slates[4].candidates == slates[2].candidates != slates[0].candidates
    assert cache.stats()["shared_in_flight"] == 3 and cache.stats()["in_flight"] == 0
    assert server.stats()["cache_hits"] == 3


def test_a_catalog_update_makes_the_next_identical_request_a_miss(make_server, base, requests, expected):
    engine = fresh_engine(base)
    cache = ResultCache(ttl_s=60)
    server = make_server(engine, cache=cache)
    request = requests[5]
    before = server.submit(request, CFG).result(WAIT_S)
    assert before.catalog_version == "1" and same_result(before, expected[5])
    assert server.submit(request, CFG).result(WAIT_S).cache_hit
    assert engine.set_catalog(base.catalog) == "2"
    after = server.submit(dataclasses.replace(request, request_id="after"), CFG).result(WAIT_S)
    assert after.cache_hit is False and after.catalog_version == "2" and after.request_id == "after"
    assert same_result(after, before)  # the same catalog content
    assert cache.stats()["entries"] == 1  # the old version's entry was dropped
    assert engine.set_catalog(base.catalog, version="spring") == "spring"
    named = server.submit(request, CFG).result(WAIT_S)
    assert named.cache_hit is False and named.catalog_version == "spring"
    hit = server.submit(request, CFG).result(WAIT_S)
    assert hit.cache_hit is True and hit.catalog_version == "spring"


def test_cache_entries_expire_after_the_ttl(make_server, fake):
    now = [1000.0]
    cache = ResultCache(ttl_s=60, clock=lambda: now[0])
    server = make_server(fake, cache=cache)
    first = server.submit(req(0)).result(WAIT_S)
    now[0] += 59.0
    hit = server.submit(req(0, "hit")).result(WAIT_S)
    assert hit.cache_hit and hit.candidates == first.candidates
    now[0] += 2.0  # 61 s since it was stored (a hit does not make an entry younger)
    expired = server.submit(req(0, "expired")).result(WAIT_S)
    assert expired.ok and expired.cache_hit is False and expired.candidates != first.candidates
    assert fake.ids() == [["r0"], ["expired"]]


def test_error_slates_are_not_cached(make_server, base, requests):
    engine = ProbeEngine(base.model, default_config=CFG, fail=lambda ids: len(engine.calls) == 1)  # the first batch
    cache = ResultCache(ttl_s=60)
    server = make_server(engine, cache=cache)
    failed = server.submit(req(0)).result(WAIT_S)
    assert not failed.ok and "RuntimeError: boom" in failed.error
    assert cache.stats()["entries"] == 0
    retried = server.submit(req(0, "retry")).result(WAIT_S)
    assert retried.ok and retried.cache_hit is False
    assert engine.ids() == [["r0"], ["retry"]]
    # a bad request (the real engine's RequestError slate) is computed, and refused, each time
    real = make_server(base, cache=cache)
    bad = Request(history_poi_codes=[[1, 40, 2]], organic_items=requests[0].organic_items)
    for rid in ("bad-1", "bad-2"):
        slate = real.submit(dataclasses.replace(bad, request_id=rid), CFG).result(WAIT_S)
        assert slate.error.startswith("requests[0].history_poi_codes") and slate.cache_hit is False
    assert real.stats()["errors"] == 2 and real.stats()["cache_hits"] == 0


def test_max_entries_evicts_the_least_recently_used(make_server, fake):
    cache = ResultCache(ttl_s=60, max_entries=2)
    server = make_server(fake, cache=cache)

    def serve(i, rid):
        return server.submit(req(i, rid)).result(WAIT_S)

    for i in range(3):
        assert not serve(i, f"r{i}").cache_hit
    assert cache.stats()["entries"] == 2
    assert serve(2, "r2-again").cache_hit  # kept (and now the most recent)
    assert not serve(0, "r0-again").cache_hit  # evicted; stored again, evicting r1
    assert not serve(1, "r1-again").cache_hit
    assert serve(0, "r0-third").cache_hit
    assert cache.stats()["entries"] == 2
    assert [ids[0] for ids in fake.ids()] == ["r0", "r1", "r2", "r0-again", "r1-again"]


@pytest.mark.parametrize("variant", ["bool codes", "int request_id"])
def test_a_cache_hit_never_serves_a_request_the_engine_refuses(make_server, base, requests, variant):
    organic = requests[0].organic_items
    good = Request(history_poi_codes=np.array([[1, 0, 1]]), organic_items=organic, request_id="good")
    if variant == "bool codes":
        codes = np.array([[True, False, True]])
        bad, field = dataclasses.replace(good, history_poi_codes=codes, request_id="bad"), "history_poi_codes"
    else:
        bad, field = dataclasses.replace(good, request_id=7), "request_id"
    assert base.generate([bad], CFG)[0].error.startswith(f"requests[0].{field}")  # what the engine says
    server = make_server(base, cache=ResultCache(ttl_s=60))
    assert server.submit(good, CFG).result(WAIT_S).ok
    slate = server.submit(bad, CFG).result(WAIT_S)
    assert slate.error is not None and slate.error.startswith(f"requests[0].{field}"), slate


# -- 9. option validation ------------------------------------------------------------------------
@pytest.mark.parametrize("options, field", [
    (dict(max_batch_size=0), "max_batch_size"),
    (dict(max_batch_size=2.0), "max_batch_size"),
    (dict(max_wait_ms=-1), "max_wait_ms"),
    (dict(max_wait_ms=float("nan")), "max_wait_ms"),
    (dict(max_queue=0), "max_queue"),
    (dict(max_queue=True), "max_queue"),
    (dict(preferred_batch_sizes=(0,)), "preferred_batch_sizes[0]"),
    (dict(preferred_batch_sizes=(4, "8")), "preferred_batch_sizes[1]"),
    (dict(preferred_batch_sizes="8"), "preferred_batch_sizes"),
    (dict(torch_threads=True), "torch_threads"),
    (dict(torch_threads=0), "torch_threads"),
    (dict(default_deadline_ms=-5), "default_deadline_ms"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_options_raise_config_error_naming_the_field(fake, options, field):
    threads = threading.active_count()
    with pytest.raises(ConfigError) as err:
        Server(fake, **options)
    assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        ServerOptions(**options)
    assert err.value.field == field
    assert threading.active_count() == threads  # no dispatcher was left running


def test_server_needs_an_engine_and_a_result_cache(fake):
    with pytest.raises(ConfigError) as err:
        Server(object())
    assert err.value.field == "engine"
    with pytest.raises(ConfigError) as err:
        Server(fake, cache={})
    assert err.value.field == "cache"
    with pytest.raises(TypeError):
        Server(fake, max_wait=3)  # not a knob


def test_options_are_normalised_and_bounded_by_the_engine(make_server, base):
    engine = Engine(base.model, default_config=CFG, max_batch=8)
    server = make_server(engine, max_batch_size=100, preferred_batch_sizes=[16, 4, 2, 4])
    assert server.max_batch_size == 8 and server.preferred_batch_sizes == (2, 4)
    assert server.options.preferred_batch_sizes == (2, 4, 16)
    assert make_server(engine).preferred_batch_sizes == (1, 2, 4, 8)  # the CUDA-graph buckets up to it


def test_a_bad_config_raises_at_submit(make_server, fake):
    server = make_server(fake)
    with pytest.raises(ConfigError) as err:
        server.submit(req(0), "lists")
    assert err.value.field == "config"
    with pytest.raises(ConfigError) as err:
        server.submit(req(0), DecodeConfig(beams=(4,), num_slots=10_000))
    assert err.value.field == "num_slots"
    assert fake.calls == [] and server.stats()["submitted"] == 0


# -- 10. asyncio -----------------------------------------------------------------------------------
def test_asubmit_awaits_the_slate(make_server, base, requests, expected):
    server = make_server(base)
    slate = asyncio.run(server.asubmit(requests[7], CFG))
    assert slate.request_id == "req-7" and same_result(slate, expected[7])

    async def many():
        return await asyncio.gather(server.asubmit_many(requests[8:11], CFG), server.asubmit(requests[11], CFG))

    body, single = asyncio.run(many())
    assert [s.request_id for s in body] == ["req-8", "req-9", "req-10"]
    assert all(same_result(s, expected[i]) for s, i in zip([*body, single], range(8, 12)))


def test_asubmit_raises_what_submit_raises(make_server, fake):
    server = make_server(fake)
    with pytest.raises(ConfigError):
        asyncio.run(server.asubmit(req(0), deadline_ms=0))
    server.close()
    with pytest.raises(ServerClosedError):
        asyncio.run(server.asubmit(req(0)))


# -- 11. weight updates ----------------------------------------------------------------------------
def test_set_weights_bumps_the_model_version_slates_report(make_server, base, requests, expected, tmp_path):
    engine = fresh_engine(base)
    cache = ResultCache(ttl_s=60)
    server = make_server(engine, cache=cache)
    before = server.submit(requests[12], CFG).result(WAIT_S)
    assert before.model_version == "1" and same_result(before, expected[12])
    engine.model.save_pretrained(tmp_path / "w")
    assert engine.set_weights(tmp_path / "w") == "2"
    assert engine.model_version == "2"
    after = server.submit(dataclasses.replace(requests[12], request_id="after"), CFG).result(WAIT_S)
    assert after.model_version == "2" and after.cache_hit is False  # the new weights' own entry
    assert same_result(after, before)  # equal weights, equal slates
    assert server.submit(requests[12], CFG).result(WAIT_S).cache_hit

    other = dataclasses.replace(engine.config, encoder=dataclasses.replace(engine.config.encoder, n_layers=1))
    GenerativeAdModel.from_config(other).save_pretrained(tmp_path / "other")
    with pytest.raises(ConfigFileError) as err:
        engine.set_weights(tmp_path / "other")
    assert isinstance(err.value, CheckpointError) and err.value.field == "encoder.n_layers"
    assert engine.model_version == "2"
    still = server.submit(dataclasses.replace(requests[13], request_id="still"), CFG).result(WAIT_S)
    assert still.model_version == "2" and same_result(still, expected[13])
    with pytest.raises(CheckpointError):
        engine.set_weights(tmp_path / "missing")
    assert engine.model_version == "2"
    assert engine.set_weights(tmp_path / "w", version="v-next") == "v-next"
    assert server.submit(requests[14], CFG).result(WAIT_S).model_version == "v-next"
