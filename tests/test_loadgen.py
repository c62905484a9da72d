"""The load generator against a fake ``/v1/slates`` served by uvicorn on loopback.

The fake's knobs (``FAKE``) set a delay, a 429 every Nth call, a 504 every Mth, a slow call
every Kth; it marks a slate ``cache_hit`` when it has seen the request's content before. Counts
are checked exactly where they depend only on the seeded arrivals, and within wide bands where
they depend on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time

import pytest

fastapi = pytest.importorskip("fastapi", reason="the fake server needs fastapi")
uvicorn = pytest.importorskip("uvicorn", reason="the fake server needs uvicorn")
pytest.importorskip("httpx", reason="the load generator needs httpx")

from ega_infer.exceptions import ConfigError  # noqa: E402
from ega_infer.serving.loadgen import (  # noqa: E402
    STATUSES, LoadConfig, add_loadtest_arguments, plot_load, run_load, run_loadtest, synthetic_payloads,
)

FAKE: dict = {}


def _reset() -> None:
    FAKE.clear()
    FAKE.update(delay_s=0.0, every_429=0, every_504=0, slow_every=0, slow_s=0.0,
                calls=0, seen=set(), ids=[], bodies=[])


def _app():
    from fastapi.responses import JSONResponse

    app = fastapi.FastAPI()

    @app.post("/v1/slates")
    async def slates(body: dict):
        FAKE["calls"] += 1
        call = FAKE["calls"]
        FAKE["bodies"].append({k: v for k, v in body.items() if k != "requests"} | {"n": len(body["requests"])})
        if FAKE["every_429"] and call % FAKE["every_429"] == 0:
            return JSONResponse({"error": {"code": 429, "field": None, "message": "queue full"}}, 429,
                                headers={"Retry-After": "1"})
        if FAKE["every_504"] and call % FAKE["every_504"] == 0:
            return JSONResponse({"error": {"code": 504, "field": None, "message": "deadline"}}, 504)
        slow = FAKE["slow_every"] and call % FAKE["slow_every"] == 0
        await asyncio.sleep(FAKE["slow_s"] if slow else FAKE["delay_s"])
        out = []
        for request in body["requests"]:
            FAKE["ids"].append(request["request_id"])
            key = json.dumps({k: v for k, v in request.items() if k != "request_id"}, sort_keys=True)
            out.append({"request_id": request["request_id"], "slots": [], "candidates": [],
                        "latency_ms": {"total": 1.0}, "error": None, "catalog_version": "c0", "model_version": "m0", "beam_schedule": [4, 8, 8],
                        "queue_ms": 0.5, "cache_hit": key in FAKE["seen"]})
            FAKE["seen"].add(key)
        return {"slates": out}

    return app


@pytest.fixture(scope="module")
def base_url():
    _reset()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the fake server did not start within 10 s"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(5)
    sock.close()


@pytest.fixture
def fake(base_url):
    _reset()
    return base_url


def _check_accounting(row: dict) -> None:
    s = row["statuses"]
    assert set(s) == set(STATUSES)
    assert sum(s.values()) == row["arrivals"]
    assert row["sent"] == row["arrivals"] - s["dropped"]
    assert row["completed"] == row["sent"] - s["transport_error"]
    assert row["ok"] == s["200"]


# -- LoadConfig --------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, field", [
    ({"url": "http://10.0.0.1:8000"}, "url"),
    ({"url": "http://example.com"}, "url"),
    ({"url": "ftp://127.0.0.1"}, "url"),
    ({"url": "http://127.0.0.1:99999"}, "url"),
    ({"rates": ()}, "rates"),
    ({"rates": (10, 0)}, "rates[1]"),
    ({"rates": (20_000,)}, "rates[0]"),
    ({"rates": "10"}, "rates"),
    ({"duration_s": 0}, "duration_s"),
    ({"duration_s": float("nan")}, "duration_s"),
    ({"concurrency": 0}, "concurrency"),
    ({"concurrency": 5000}, "concurrency"),
    ({"concurrency": 2.0}, "concurrency"),
    ({"deadline_ms": -1.0}, "deadline_ms"),
    ({"requests_per_body": 257}, "requests_per_body"),
    ({"repeat_fraction": 1.5}, "repeat_fraction"),
    ({"max_requests": 0}, "max_requests"),
    ({"timeout_s": True}, "timeout_s"),
])
def test_config_names_the_bad_field(changes, field):
    kwargs = {"url": "http://127.0.0.1:8000", "rates": (10,)} | changes
    with pytest.raises(ConfigError) as info:
        LoadConfig(**kwargs)
    assert info.value.field == field


def test_config_accepts_loopback_and_remote_when_allowed():
    for url in ("http://localhost:8000", "http://127.0.0.2:1", "http://[::1]:8000/", "https://127.0.0.1"):
        LoadConfig(url=url, rates=[5])
    config = LoadConfig(url="http://10.0.0.1:8000", rates=[5, 10], allow_remote=True)
    assert config.rates == (5.0, 10.0)


# -- payloads ----------------------------------------------------------------------------------
def test_synthetic_payloads_distinct_ids_and_repeated_content():
    payloads = synthetic_payloads(300, seed=0, repeat_fraction=0.5, repeat_pool=4)
    assert len({p["request_id"] for p in payloads}) == 300
    contents = [json.dumps({k: v for k, v in p.items() if k != "request_id"}, sort_keys=True) for p in payloads]
    repeated = [c for p, c in zip(payloads, contents) if "-r" in p["request_id"]]
    fresh = [c for p, c in zip(payloads, contents) if "-r" not in p["request_id"]]
    assert 100 < len(repeated) < 200 and len(set(repeated)) <= 4
    assert len(set(fresh)) == len(fresh) and not set(fresh) & set(repeated)
    assert synthetic_payloads(300, seed=0, repeat_fraction=0.5, repeat_pool=4) == payloads
    # Past the few hundred held-out users, contents stay distinct (histories cut shorter).
    many = synthetic_payloads(2000, seed=0)
    assert len({json.dumps({k: v for k, v in p.items() if k != "request_id"}) for p in many}) == 2000
    assert min(len(p["history_poi_codes"]) for p in many) >= 8


# -- runs against the fake ---------------------------------------------------------------------
def test_counts_statuses_and_rate(fake):
    FAKE.update(every_429=5, every_504=7)
    report = run_load(LoadConfig(url=fake, rates=(20, 50), duration_s=0.8))
    assert [r["offered_rate"] for r in report["rows"]] == [20.0, 50.0]
    calls = 0
    for row in report["rows"]:
        _check_accounting(row)
        s = row["statuses"]
        assert s["transport_error"] == s["dropped"] == s["slate_error"] == 0
        expected = row["offered_rate"] * 0.8
        assert 0.3 * expected <= row["arrivals"] <= 2 * expected + 10  # a wide Poisson band
        # The fake numbers its calls across both rates.
        n429 = (calls + row["sent"]) // 5 - calls // 5
        n504 = sum(1 for c in range(calls + 1, calls + row["sent"] + 1) if c % 7 == 0 and c % 5)
        assert (s["429"], s["504"]) == (n429, n504)
        calls += row["sent"]
        assert 0.3 * row["ok"] / 0.8 <= row["achieved_qps"] <= row["ok"] / 0.8 * 1.05
        assert row["beam_schedules"] == {"4-8-8": row["ok"]}
        assert row["queue_ms"] == {"p50": 0.5, "p99": 0.5}
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert row["goodput_qps"] == row["achieved_qps"]  # no deadline: every OK answer counts
    assert FAKE["calls"] == calls
    assert len(set(FAKE["ids"])) == len(FAKE["ids"])  # one payload stream across the rates
    assert report["url"] == fake and report["config"]["rates"] == (20.0, 50.0)
    assert {"machine", "started"} <= set(report)
    json.dumps(report)


def test_requests_per_body_and_max_requests(fake):
    report = run_load(LoadConfig(url=fake, rates=(100,), duration_s=1.5, requests_per_body=3, max_requests=10))
    row = report["rows"][0]
    _check_accounting(row)
    assert row["arrivals"] == row["ok"] == 10
    assert [b["n"] for b in FAKE["bodies"]] == [3, 3, 3, 1]
    assert row["elapsed_s"] < 1.0  # stopped at max_requests, not at the duration


def test_concurrency_cap_drops(fake):
    FAKE.update(delay_s=0.3)
    row = run_load(LoadConfig(url=fake, rates=(60,), duration_s=0.6, concurrency=2))["rows"][0]
    _check_accounting(row)
    assert row["statuses"]["dropped"] > 0
    assert 2 <= row["sent"] <= 8  # two slots, each busy 0.3 s per call
    assert row["latency_ms"]["p50"] >= 300


def test_goodput_excludes_calls_past_the_deadline(fake):
    FAKE.update(slow_every=2, slow_s=0.4)
    row = run_load(LoadConfig(url=fake, rates=(30,), duration_s=0.8, deadline_ms=200))["rows"][0]
    _check_accounting(row)
    assert {b.get("deadline_ms") for b in FAKE["bodies"]} == {200}
    fast = row["sent"] - row["sent"] // 2
    assert row["ok"] == row["sent"]
    assert 0.5 * fast <= row["good"] <= fast < row["ok"]
    assert row["goodput_fraction"] == round(row["good"] / row["arrivals"], 4)
    assert row["latency_ms"]["max"] >= 400


def test_cache_hits_counted(fake):
    row = run_load(LoadConfig(url=fake, rates=(60,), duration_s=0.8, repeat_fraction=0.6, repeat_pool=3))["rows"][0]
    repeats = sum("-r" in i for i in FAKE["ids"])
    assert row["cache_hits"] == repeats - len({i.rsplit("-", 1)[1] for i in FAKE["ids"] if "-r" in i})
    assert row["cache_hits"] > 5
    _reset()
    row = run_load(LoadConfig(url=fake, rates=(60,), duration_s=0.5))["rows"][0]
    assert row["ok"] > 0 and row["cache_hits"] == 0


def test_transport_errors_when_nothing_listens():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    payloads = [{"request_id": "x"}]
    row = run_load(LoadConfig(url=f"http://127.0.0.1:{port}", rates=(20,), duration_s=0.3, timeout_s=2),
                   payloads)["rows"][0]
    _check_accounting(row)
    assert row["sent"] == row["statuses"]["transport_error"] > 0
    assert row["latency_ms"]["p50"] is None and row["achieved_qps"] == 0


# -- plot and command line ---------------------------------------------------------------------
def test_plot_load_writes_png(tmp_path):
    pytest.importorskip("matplotlib", reason="plot_load draws with matplotlib")
    rows = [{"offered_rate": r, "achieved_qps": 0.9 * r, "latency_ms": {"p50": 2.0 + r / 10, "p99": 5.0 + r / 5}}
            for r in (10.0, 20.0, 40.0)]
    rows.append({"offered_rate": 80.0, "achieved_qps": 0.0, "latency_ms": {"p50": None, "p99": None}})
    path = tmp_path / "load.png"
    assert plot_load({"url": "http://127.0.0.1:1", "started": "now", "rows": rows}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_loadtest_writes_json_and_refuses_remote(fake, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_loadtest_arguments(parser)
    out = tmp_path / "sub" / "load.json"
    args = parser.parse_args(["--url", fake, "--rate", "15,30", "--duration", "0.4", "--deadline-ms", "500",
                              "--out", str(out)])
    assert run_loadtest(args) == 0
    report = json.loads(out.read_text())
    assert [r["offered_rate"] for r in report["rows"]] == [15.0, 30.0]
    assert out.with_suffix(".png").exists() or "no plot" in capsys.readouterr().out
    assert run_loadtest(parser.parse_args(["--url", "http://10.1.2.3:8000"])) == 2
    assert "ega-infer loadtest: url: host '10.1.2.3' is not loopback" in capsys.readouterr().err
    assert run_loadtest(parser.parse_args(["--url", fake, "--rate", "ten"])) == 2
    assert "--rate" in capsys.readouterr().err
