"""The HTTP API: slates equal the engine's, field-named errors for every kind of bad input,
metrics that parse, admin auth and path containment, catalog and weight updates under load."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ega_infer import DecodeConfig, Engine
from ega_infer.exceptions import QueueFullError
from ega_infer.serving import ResultCache, Server
from ega_infer.serving.admin import AdminConfig
from ega_infer.serving.backend import LocalBackend
from ega_infer.serving.http import create_app
from ega_infer.serving.schemas import request_to_json
from ega_infer.slate import Slate
from ega_infer.testing import synthetic_catalog, synthetic_requests

TOKEN = "t0ken-for-the-admin-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = DecodeConfig(beams=(4,), num_slots=3, num_candidates=2)


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    engine = Engine.from_pretrained("tiny")
    engine.default_config = CONFIG
    engine.set_catalog(synthetic_catalog(engine.config, n_items=150, seed=1))
    return engine


@pytest.fixture(scope="module")
def requests(engine):
    return synthetic_requests(engine.catalog, engine.config, n=5, seed=2)


@pytest.fixture()
def client(engine, tmp_path):
    engine.set_catalog(synthetic_catalog(engine.config, n_items=150, seed=1))
    backend = LocalBackend(Server(engine, max_wait_ms=1.0))
    backend.warmed = True
    (tmp_path / "catalogs").mkdir()
    (tmp_path / "weights").mkdir()
    app = create_app(backend, AdminConfig(TOKEN, tmp_path / "catalogs", tmp_path / "weights"))
    with TestClient(app) as c:
        c.backend, c.dirs = backend, tmp_path
        yield c
    backend.close()


def body(requests, **extra):
    return {"requests": [request_to_json(r) for r in requests], **extra}


def test_slates_equal_engine_generate_and_carry_versions(client, engine, requests):
    response = client.post("/v1/slates", json=body(requests))
    assert response.status_code == 200
    slates = response.json()["slates"]
    ref = engine.generate(requests)
    assert [s["request_id"] for s in slates] == [r.request_id for r in requests]
    for got, want in zip(slates, ref):
        assert [(s["item_id"], s["creative_id"], s["is_ad"]) for s in got["slots"]] == [
            (s.item_id, s.creative_id, s.is_ad) for s in want.slots]
        np.testing.assert_allclose([s["payment"] for s in got["slots"]], [s.payment for s in want.slots], rtol=1e-6)
        assert [c["item_ids"] for c in got["candidates"]] == [list(c.item_ids) for c in want.candidates]
        assert got["catalog_version"] == engine.catalog_version and got["model_version"] == engine.model_version
        assert got["beam_schedule"] == [4] and got["queue_ms"] >= 0 and got["cache_hit"] is False
        assert got["error"] is None and "total" in got["latency_ms"]


def test_config_overrides_are_served(client, engine, requests):
    response = client.post("/v1/slates", json=body(requests[:2], config={"beams": [2], "num_candidates": 1}))
    assert response.status_code == 200
    ref = engine.generate(requests[:2], dataclasses.replace(CONFIG, beams=(2,), num_candidates=1))
    got = response.json()["slates"]
    assert [[s["item_id"] for s in g["slots"]] for g in got] == [[s.item_id for s in r.slots] for r in ref]
    assert all(len(g["candidates"]) <= 1 and g["beam_schedule"] == [2] for g in got)


def test_a_bad_request_fails_alone(client, requests):
    items = body(requests[:2])["requests"]
    bad = dict(items[0], history_poi_codes=[[10**6, 0, 0]], request_id="bad")
    response = client.post("/v1/slates", json={"requests": [items[0], bad, [1, 2], {"nope": 1}, items[1]]})
    assert response.status_code == 200
    slates = response.json()["slates"]
    assert slates[0]["error"] is None and slates[4]["error"] is None
    assert slates[1]["error"].startswith("requests[1].history_poi_codes[0, 0]") and slates[1]["request_id"] == "bad"
    assert slates[2]["error"].startswith("requests[2]:")
    assert slates[3]["error"].startswith("requests[3].nope")


def test_a_body_of_only_bad_requests_is_a_400_with_its_slates(client):
    response = client.post("/v1/slates", json={"requests": [{"history_actions": "x"}]})
    assert response.status_code == 400
    assert response.json()["error"]["field"].startswith("requests[0]")
    assert len(response.json()["slates"]) == 1


@pytest.mark.parametrize("payload, field", [
    ({"requests": []}, "requests"),
    ({"requests": "x"}, "requests"),
    ({}, "requests"),
    ([1], "body"),
    ({"requests": [{}], "extra": 1}, "extra"),
    ({"requests": [{}], "config": {"beams": [0]}}, "config.beams[0]"),
    ({"requests": [{}], "config": {"beams": [10**6]}}, "beams[0]"),
    ({"requests": [{}], "config": {"num_slots": 10**9}}, "num_slots"),
    ({"requests": [{}], "config": {"alpha": "x"}}, "config.alpha"),
    ({"requests": [{}], "config": {"backend": "cuda"}}, "config.backend"),
    ({"requests": [{}], "config": {"list_score": {"ctr": 10**300}}}, "config.list_score.ctr"),
    ({"requests": [{}], "config": {"list_score": {"bogus": 1}}}, "config.list_score.bogus"),
    ({"requests": [{}], "config": []}, "config"),
    ({"requests": [{}], "deadline_ms": 0}, "deadline_ms"),
    ({"requests": [{}], "deadline_ms": "soon"}, "deadline_ms"),
    ({"requests": [{}] * 1000}, "requests"),
])
def test_bad_bodies_get_a_field_named_400(client, payload, field):
    response = client.post("/v1/slates", json=payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and error["field"] == field and field in error["message"] or field == "body"


@pytest.mark.parametrize("raw", [b"{not json", b"", b"NaN", b'{"requests": [{"history_actions": [NaN]}]}',
                                 b"[" * 100_000, "\udcff".encode("utf-8", "surrogatepass")])
def test_unreadable_json_is_a_400(client, raw):
    response = client.post("/v1/slates", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "body"


def test_bodies_over_the_limit_are_a_413_with_or_without_content_length(engine):
    backend = LocalBackend(Server(engine))
    backend.warmed = True
    with TestClient(create_app(backend, max_body_bytes=1000)) as c:
        assert c.post("/v1/slates", content=b"x" * 2000).status_code == 413
        chunked = c.post("/v1/slates", content=iter([b"{" + b" " * 600, b" " * 600 + b"}"]))
        assert chunked.status_code == 413 and chunked.json()["error"]["field"] == "body"
    backend.close()


def test_admin_body_schema_errors_are_422_with_the_field(client):
    response = client.post("/admin/catalog/bids", json={"item_ids": [1], "bids": ["x"]}, headers=AUTH)
    assert response.status_code == 422 and response.json()["error"]["field"] == "bids[0]"
    response = client.post("/admin/catalog/bids", json={"item_ids": [1]}, headers=AUTH)
    assert response.status_code == 422 and response.json()["error"]["field"] == "bids"


class _FakeBackend:
    """A backend whose answers a test chooses."""

    default_config, max_batch_size = CONFIG, 8

    def __init__(self, ready=True, raises=None, delay=0.0):
        self._ready, self._raises, self._delay = ready, raises, delay

    async def slates(self, requests, config, deadline_ms):
        import asyncio

        if self._raises:
            raise self._raises
        await asyncio.sleep(self._delay)
        return [Slate("r", error="deadline_ms: too late") for _ in requests]

    def ready(self):
        return self._ready, {"catalog": self._ready}

    def stats(self):
        return {"queue_depth": 3, "catalog_version": "7", "model_version": "2", "batch_sizes": {1: 2, 4: 1}}

    def retry_after_s(self):
        return 3

    def catalog(self):
        return None


def test_queue_full_is_a_429_with_retry_after_not_ready_a_503_deadline_a_504():
    with TestClient(create_app(_FakeBackend(raises=QueueFullError("full")))) as c:
        response = c.post("/v1/slates", json={"requests": [{}]})
        assert response.status_code == 429 and response.headers["retry-after"] == "3"
    with TestClient(create_app(_FakeBackend(ready=False))) as c:
        assert c.post("/v1/slates", json={"requests": [{}]}).status_code == 503
        assert c.get("/ready").status_code == 503 and c.get("/health").status_code == 200
    with TestClient(create_app(_FakeBackend())) as c:
        response = c.post("/v1/slates", json={"requests": [{}, {}], "deadline_ms": 5})
        assert response.status_code == 504 and response.json()["error"]["field"] == "deadline_ms"


def test_an_expired_deadline_over_http_is_a_504(client, requests):
    response = client.post("/v1/slates", json=body(requests[:1], deadline_ms=1e-6))
    assert response.status_code == 504
    assert response.json()["slates"][0]["error"].startswith("deadline_ms:")


def test_metrics_parse_and_count(client, requests):
    client.post("/v1/slates", json=body(requests[:2]))
    client.post("/v1/slates", json={"requests": [{"history_actions": "x"}]})
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    slates = {s.labels["status"]: s.value for s in families["ega_slates"].samples if s.name == "ega_slates_total"}
    assert slates["ok"] >= 2 and slates["error"] >= 1
    for name in ("ega_stage_latency_seconds", "ega_queue_latency_seconds", "ega_queue_depth", "ega_batch_size",
                 "ega_beam_schedule_slates", "ega_cache_hits", "ega_catalog_info", "ega_model_info", "ega_http_responses"):
        assert name in families, name
    assert any(s.labels.get("version") == client.backend.engine.catalog_version for s in families["ega_catalog_info"].samples)
    assert any(s.labels.get("stage") == "encode" for s in families["ega_stage_latency_seconds"].samples)


def test_openapi_schema_documents_the_slate_api(client):
    spec = client.get("/openapi.json").json()
    assert "SlatesBody" in spec["components"]["schemas"] and "RequestJSON" in spec["components"]["schemas"]
    assert "/v1/slates" in spec["paths"] and "/admin/catalog/bids" in spec["paths"]


# -- admin ---------------------------------------------------------------------------------
def test_admin_needs_the_token(client):
    assert client.get("/admin/catalog").status_code == 401
    assert client.get("/admin/catalog", headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 403
    assert client.get("/admin/catalog", headers={"Authorization": TOKEN}).status_code == 401
    assert client.get("/admin/catalog", headers=AUTH).status_code == 200


def test_admin_is_off_without_a_token(engine):
    backend = LocalBackend(Server(engine))
    with TestClient(create_app(backend)) as c:
        assert c.get("/admin/catalog", headers=AUTH).status_code == 404
        assert c.post("/admin/catalog/remove", json={"item_ids": [1]}).status_code == 404
    backend.close()


def test_catalog_files_load_from_the_catalog_directory_only(client, engine):
    catalogs = client.dirs / "catalogs"
    catalog = synthetic_catalog(engine.config, n_items=120, seed=5)
    catalog.save(catalogs / "next.safetensors")
    catalog.to_parquet(catalogs / "next_parquet")
    outside = client.dirs / "outside.safetensors"
    catalog.save(outside)
    os.symlink(outside, catalogs / "link.safetensors")
    for name in ("../outside.safetensors", str(outside), "link.safetensors", "/etc/passwd", "missing.safetensors",
                 "", "a\x00b"):
        response = client.post("/admin/catalog/load", json={"path": name}, headers=AUTH)
        assert response.status_code in (400, 422) and response.json()["error"]["field"] == "path", name
    before = engine.catalog_version
    response = client.post("/admin/catalog/load", json={"path": "next.safetensors"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["items"] == 120
    assert response.json()["catalog_version"] != before == before
    response = client.post("/admin/catalog/load", json={"path": "next_parquet"}, headers=AUTH)
    assert response.status_code == 200 and len(engine.catalog) == 120


def test_bid_updates_and_removals(client, engine):
    ads = engine.catalog.item_ids[engine.catalog.is_ad][:2].tolist()
    response = client.post("/admin/catalog/bids", json={"item_ids": ads, "bids": [5.0, 6.0]}, headers=AUTH)
    assert response.status_code == 200
    assert engine.catalog.bids[engine.catalog.index_of(ads)].tolist() == [5.0, 6.0]
    bad = client.post("/admin/catalog/bids", json={"item_ids": [ads[0]], "bids": [-1.0]}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["field"].startswith("bids")
    unknown = client.post("/admin/catalog/remove", json={"item_ids": [987654321]}, headers=AUTH)
    assert unknown.status_code == 400 and unknown.json()["error"]["field"].startswith("item_ids")
    removed = client.post("/admin/catalog/remove", json={"item_ids": ads[:1]}, headers=AUTH)
    assert removed.status_code == 200 and removed.json()["items"] == 149


def test_weights_load_from_the_weights_directory_only(client, engine):
    engine.model.save_pretrained(client.dirs / "weights" / "same")
    engine.model.save_pretrained(client.dirs / "elsewhere")
    assert client.post("/admin/weights", json={"path": "../elsewhere"}, headers=AUTH).status_code == 400
    before = engine.model_version
    response = client.post("/admin/weights", json={"path": "same"}, headers=AUTH)
    assert response.status_code == 200 and response.json()["model_version"] != before
    (client.dirs / "weights" / "broken").mkdir()
    broken = client.post("/admin/weights", json={"path": "broken"}, headers=AUTH)
    assert broken.status_code == 400 and engine.model_version == response.json()["model_version"]


# -- updates under concurrent load ---------------------------------------------------------
@pytest.fixture()
def live(client):
    """The client's app on a real uvicorn port (concurrent clients)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_catalog_and_weight_updates_under_load_fail_nothing_and_mix_nothing(client, live, engine, requests):
    catalog = engine.catalog
    ads = catalog.item_ids[catalog.is_ad]
    base = dict(zip(ads.tolist(), catalog.bids[catalog.is_ad].tolist()))
    scale = {engine.catalog_version: 1.0}  # catalog version -> the factor every ad's bid carries
    engine.model.save_pretrained(client.dirs / "weights" / "w")
    payload = body(requests[:2])
    results, failures, stop = [], [], threading.Event()

    def load():
        with httpx.Client(base_url=live, timeout=60) as http:
            while not stop.is_set():
                r = http.post("/v1/slates", json=payload)
                (results if r.status_code == 200 else failures).append(r.json() if r.status_code == 200 else r.text)

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    with httpx.Client(base_url=live, headers=AUTH, timeout=60) as admin:
        for k in range(1, 4):
            time.sleep(0.3)
            factor = 1.0 + 0.25 * k
            r = admin.post("/admin/catalog/bids", json={"item_ids": ads.tolist(),
                                                         "bids": [float(np.float32(b * factor)) for b in base.values()]})
            assert r.status_code == 200, r.text
            scale[r.json()["catalog_version"]] = factor
            if k == 2:
                assert admin.post("/admin/weights", json={"path": "w"}).status_code == 200
        time.sleep(0.3)
    stop.set()
    for w in workers:
        w.join(60)
    assert not failures
    assert len(results) >= 6
    seen = set()
    for response in results:
        for slate in response["slates"]:
            assert slate["error"] is None
            version = slate["catalog_version"]
            seen.add(version)
            for slot in slate["slots"]:  # every bid is the one of the version the slate reports
                if slot["is_ad"]:
                    assert slot["bid"] == pytest.approx(base[slot["item_id"]] * scale[version], rel=1e-6)
    assert len(seen) >= 2


def test_the_result_cache_over_http(engine, requests):
    backend = LocalBackend(Server(engine, cache=ResultCache(ttl_s=60)))
    backend.warmed = True
    with TestClient(create_app(backend)) as c:
        first = c.post("/v1/slates", json=body(requests[:1])).json()["slates"][0]
        again = c.post("/v1/slates", json=body(requests[:1])).json()["slates"][0]
        assert first["cache_hit"] is False and again["cache_hit"] is True
        assert again["slots"] == first["slots"]
        text = c.get("/metrics").text
        assert "ega_cache_hits_total 1.0" in text
    backend.close()


def test_the_serve_command_wires_a_working_app(tmp_path, monkeypatch):
    """``ega-infer serve`` builds the app from its flags (uvicorn itself is not started)."""
    started = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.setenv("EGA_INFER_ADMIN_TOKEN", TOKEN)
    from ega_infer.cli import main

    assert main(["serve", "--model", "tiny", "--port", "8123", "--no-warmup", "--cache-ttl", "5",
                 "--catalog-dir", str(tmp_path)]) == 0
    assert started["port"] == 8123 and started["host"] == "127.0.0.1"
    assert main(["serve", "--model", "tiny", "--catalog-dir", str(tmp_path / "missing")]) == 2
    assert main(["serve", "--model", str(tmp_path)]) == 2
