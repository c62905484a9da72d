"""Ray Serve scale-out (``ega_infer.serving.ray_serve``): two replicas of ``tiny`` serve the
in-process engine's slates, a catalog update reaches both in place, a weights update too while
refused updates roll back, a killed replica is replaced with the current catalog while traffic
goes on, and the HTTP app (admin included) serves over it.

One local Ray for the module (about 30 s to start on 2 cores); the tests run in order on it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time

import pytest
import torch

pytest.importorskip("ray", reason="ray[serve] is not installed (pip install 'ega-infer[ray]')")
pytest.importorskip("ray.serve", reason="ray is installed without serve (pip install 'ray[serve]')")

import ray  # noqa: E402
from ray import serve  # noqa: E402

from ega_infer.exceptions import (CatalogError, CatalogFileError, CheckpointError, ConfigError,  # noqa: E402
                                  QueueFullError, ServingError)
from ega_infer.presets import PRESETS  # noqa: E402
from ega_infer.serving import ray_serve  # noqa: E402
from ega_infer.serving.launch import add_serve_arguments, load_engine  # noqa: E402
from ega_infer.serving.schemas import request_to_json, slate_to_json  # noqa: E402
from ega_infer.testing import synthetic_catalog  # noqa: E402
from ega_infer.world import AdWorld, WorldConfig  # noqa: E402

REPLICAS = 2


@pytest.fixture(scope="module")
def backend():
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    backend = ray_serve.start_ray_backend(parser.parse_args(["--ray", "--replicas", str(REPLICAS)]))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def reference():
    """The in-process engine ``ega-infer serve`` without --ray would serve."""
    return load_engine("tiny", "cpu", 1024, None)


@pytest.fixture(scope="module")
def requests(reference):
    world = AdWorld(WorldConfig(seed=0), reference.config)
    return [world.request(int(u)) for u in world.users("test")[:4]]


def _calls(backend, requests, n: int, config=None) -> list:
    """``n`` concurrent bodies of ``requests``: their slates, or the exception a call raised."""
    async def run():
        return await asyncio.gather(*(backend.slates(requests, config or backend.default_config, None)
                                      for _ in range(n)), return_exceptions=True)
    return asyncio.run(run())


def _assert_same(got, expected) -> None:
    assert [s.error for s in got] == [None] * len(expected)
    assert [s.slots for s in got] == [s.slots for s in expected]
    assert [s.candidates for s in got] == [s.candidates for s in expected]


def _replicas(backend) -> dict[str, str]:
    """replica id -> the catalog version it serves."""
    return {r["replica_id"]: r["catalog_version"] for r in backend.stats()["replicas"]}


def _serve_until_every_replica_answered(backend, requests, expected, rounds: int = 12) -> set[str]:
    """Send bodies until every replica has answered one; each answer must equal ``expected``."""
    want = set(_replicas(backend))
    before = dict(backend.stats()["served_by_replica"])
    for _ in range(rounds):
        for slates in _calls(backend, requests, 8):
            assert not isinstance(slates, BaseException), slates
            _assert_same(slates, expected)
            assert {s.catalog_version for s in slates} == {backend.catalog_version}
        after = backend.stats()["served_by_replica"]
        answered = {rid for rid, n in after.items() if n > before.get(rid, 0)}
        if want <= answered:
            return answered
    return answered


def test_replicas_serve_the_in_process_engine_s_slates(backend, reference, requests):
    assert backend.default_config == reference.default_config
    expected = reference.generate(requests, backend.default_config)
    answered = _serve_until_every_replica_answered(backend, requests, expected)
    assert len(answered) == REPLICAS  # both replicas served, both equal the engine
    assert set(_replicas(backend).values()) == {backend.catalog_version} == {"1"}


def test_engine_errors_cross_the_ray_boundary(backend, requests):
    too_wide = dataclasses.replace(backend.default_config, beams=(2048,))  # over max_beams (1024)
    with pytest.raises(ConfigError, match=r"beams\[0\]") as info:
        asyncio.run(backend.slates(requests, too_wide, None))
    assert info.value.field == "beams[0]"
    for exc in (QueueFullError("the queue holds 9 of 9"), CatalogFileError("bids", "is NaN", "finite bids")):
        again = ray_serve.error_from_json(ray_serve.error_to_json(exc))
        assert type(again) is type(exc) and str(again) == str(exc)
    assert type(ray_serve.error_from_json({"type": "KeyError", "message": "x"})) is ServingError


def test_a_catalog_update_reaches_every_replica_in_place(backend, reference, requests):
    reference.set_catalog(backend.catalog())
    before = reference.generate(requests, backend.default_config)
    ad = next(s for slate in before for s in slate.slots if s.is_ad)
    replicas = set(_replicas(backend))
    updated = backend.catalog().with_bids([ad.item_id], [ad.bid * 40])
    version = backend.set_catalog(updated)
    assert version == "2" and backend.catalog() is updated and backend.catalog_version == "2"
    # reconfigure() ran on the running replicas: the same replicas, now on version 2
    assert _replicas(backend) == {rid: "2" for rid in replicas}
    reference.set_catalog(updated)
    expected = reference.generate(requests, backend.default_config)
    assert [s.slots for s in expected] != [s.slots for s in before]  # the update shows in the slates
    assert len(_serve_until_every_replica_answered(backend, requests, expected)) == REPLICAS


def test_weights_update_and_refused_updates_roll_back(backend, reference, requests, tmp_path):
    reference.set_catalog(backend.catalog())
    expected = reference.generate(requests, backend.default_config)
    assert backend.set_weights(PRESETS["tiny"].weights_dir) == "2" == backend.model_version  # same weights, new version
    assert {r["model_version"] for r in backend.stats()["replicas"]} == {"2"}
    for slates in _calls(backend, requests, 2):
        _assert_same(slates, expected)
        assert {s.model_version for s in slates} == {"2"}

    catalog, version = backend.catalog(), backend.catalog_version
    with pytest.raises(CheckpointError, match="missing config.json"):  # the replicas' error, raised here
        backend.set_weights(tmp_path / "missing")
    with pytest.raises(CatalogError, match="codebook_sizes") as info:
        backend.set_catalog(synthetic_catalog(PRESETS["ega-base"].model, n_items=50, seed=0))
    assert info.value.field == "codebook_sizes"
    assert (backend.catalog(), backend.catalog_version, backend.model_version) == (catalog, version, "2")
    assert [p.name for p in backend.snapshot_dir.glob("catalog-v*")] == [f"catalog-v{version}.safetensors"]
    assert {(r["catalog_version"], r["model_version"]) for r in backend.stats()["replicas"]} == {(version, "2")}
    for slates in _calls(backend, requests, 2):
        _assert_same(slates, expected)


def test_a_killed_replica_is_replaced_and_traffic_goes_on(backend, reference, requests):
    reference.set_catalog(backend.catalog())
    expected = reference.generate(requests, backend.default_config)
    version = backend.catalog_version
    victim = sorted(_replicas(backend))[0]
    actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(f"#{victim}"))
    outcomes: list[object] = []

    async def client(stop: float) -> None:
        while time.monotonic() < stop:
            try:  # a call that hangs fails the test: wait_for bounds it
                outcomes.append(await asyncio.wait_for(backend.slates(requests, backend.default_config, None), 30))
            except (ServingError, asyncio.TimeoutError) as exc:
                outcomes.append(exc)

    async def traffic() -> None:
        stop = time.monotonic() + 8
        clients = [asyncio.create_task(client(stop)) for _ in range(4)]
        await asyncio.sleep(1.5)
        await asyncio.to_thread(ray.kill, ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        await asyncio.gather(*clients)

    asyncio.run(traffic())
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert not any(isinstance(o, asyncio.TimeoutError) for o in failed)  # none hung
    assert all(isinstance(o, ray_serve.NoReplicaError) for o in failed)  # what a client sees: HTTP 503
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(served) > len(failed) and len(served) >= 8
    for slates in served:
        _assert_same(slates, expected)

    start = time.monotonic()
    while True:  # Serve starts a replacement; its user_config brings the current catalog
        states = serve.status().applications[ray_serve.APP_NAME].deployments[ray_serve.DEPLOYMENT_NAME].replica_states
        replicas = _replicas(backend)
        if states.get("RUNNING") == REPLICAS and len(replicas) == REPLICAS and victim not in replicas:
            break
        assert time.monotonic() - start < 90, f"no replacement within 90 s: {dict(states)}, {replicas}"
        time.sleep(1)
    assert set(replicas.values()) == {version}  # and the weights of the last set_weights:
    assert {r["model_version"] for r in backend.stats()["replicas"]} == {backend.model_version}
    assert len(_serve_until_every_replica_answered(backend, requests, expected)) == REPLICAS


def test_the_http_app_serves_over_ray(backend, reference, requests):
    from fastapi.testclient import TestClient

    from ega_infer.serving.admin import AdminConfig
    from ega_infer.serving.http import create_app

    token = "t" * 24
    client = TestClient(create_app(backend, AdminConfig(token=token)))
    reference.set_catalog(backend.catalog())
    body = {"requests": [request_to_json(r) for r in requests]}
    expected = [slate_to_json(s) for s in reference.generate(requests, backend.default_config)]

    response = client.post("/v1/slates", json=body)
    assert response.status_code == 200, response.text
    got = response.json()["slates"]
    assert [s["slots"] for s in got] == [s["slots"] for s in expected]
    assert [s["candidates"] for s in got] == [s["candidates"] for s in expected]
    assert {s["catalog_version"] for s in got} == {backend.catalog_version}

    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "weights": True, "catalog": True, "warmed_up": True,
                            "replicas": REPLICAS, "catalog_version": backend.catalog_version,
                            "model_version": backend.model_version}
    bad = client.post("/v1/slates", json={**body, "config": {"beams": [2048]}})  # refused by a replica's engine
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "beams[0]"

    # an admin bid update goes through RayBackend.set_catalog to every replica
    item = next(s["item_id"] for slate in got for s in slate["slots"] if s["is_ad"])
    update = client.post("/admin/catalog/bids", json={"item_ids": [item], "bids": [0.5]},
                         headers={"Authorization": f"Bearer {token}"})
    assert update.status_code == 200, update.text
    version = update.json()["catalog_version"]
    assert version == backend.catalog_version and client.get("/ready").json()["catalog_version"] == version
    assert {s["catalog_version"] for s in client.post("/v1/slates", json=body).json()["slates"]} == {version}
    assert f'ega_catalog_info{{version="{version}"}}' in client.get("/metrics").text
