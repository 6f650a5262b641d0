"""The admin listener, driven exactly as the control plane drives it."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from gateway.revision import encode
from gateway.schema import Credential, Revision
from gateway.store import RevisionStore
from tests.gateway.conftest import ALICE, Gateway, World, sha256

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/revision"), ("POST", "/revision/delta"), ("GET", "/status")]
)
@pytest.mark.parametrize("token", ["", "not-the-gateway-token"])
def test_admin_refuses_callers_without_the_gateway_token(
    gw: Gateway, world: World, method: str, path: str, token: str
) -> None:
    body = encode(world.revision()) if method != "GET" else None
    response = gw.admin(method, path, body, token=token)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}


def test_status_names_the_instance_and_its_applied_revision(gw: Gateway, world: World) -> None:
    status = gw.admin("GET", "/status").json()
    assert status["instance_id"] == "gateway-shared"
    assert status["pid"] == gw.service.process.pid
    assert status["applied"] == world.next_number() - 1


def test_pushed_revision_is_applied_and_written_to_disk(gw: Gateway, world: World) -> None:
    doc = world.revision()
    assert gw.push(doc).json() == {"applied": doc.revision}
    assert gw.admin("GET", "/status").json()["applied"] == doc.revision
    on_disk = msgspec.json.decode((gw.state_dir / "revision.json").read_bytes(), type=Revision)
    assert on_disk.revision == doc.revision


def test_invalid_revision_is_rejected_and_the_previous_one_keeps_serving(
    gw: Gateway, world: World
) -> None:
    applied = gw.admin("GET", "/status").json()["applied"]
    broken = world.revision(credentials={sha256(world.alice_key): Credential(id=11, consumer=404)})
    response = gw.push(broken)
    assert response.status_code == 400
    assert response.json()["applied"] == applied
    assert "unknown consumer 404" in response.json()["error"]
    not_json = gw.push(b"{this is not a revision")
    assert not_json.status_code == 400
    assert not_json.json()["applied"] == applied
    assert gw.admin("GET", "/status").json()["applied"] == applied
    assert gw.chat(world.alice_key).status_code == 200


def test_revision_sealed_under_another_secret_is_rejected(gw: Gateway, world: World) -> None:
    doc = world.revision()
    foreign = msgspec.structs.replace(
        doc,
        upstreams={
            **doc.upstreams,
            "mock": msgspec.structs.replace(doc.upstreams["mock"], secret="v1.AAAA.BBBB"),
        },
    )
    response = gw.push(foreign)
    assert response.status_code == 400
    assert "could not be opened" in response.json()["error"]


def test_older_revision_is_refused_as_stale(gw: Gateway, world: World) -> None:
    applied = gw.admin("GET", "/status").json()["applied"]
    response = gw.push(world.revision(number=applied - 1))
    assert response.status_code == 409
    assert response.json() == {"error": "stale", "applied": applied}


def test_pushing_the_applied_revision_again_is_a_no_op(gw: Gateway, world: World) -> None:
    applied = gw.admin("GET", "/status").json()["applied"]
    response = gw.push(world.revision(number=applied))
    assert response.status_code == 200
    assert response.json() == {"applied": applied}


def test_revoked_key_is_refused_after_delta_while_other_keys_work(
    gw: Gateway, world: World
) -> None:
    assert gw.chat(world.alice_key).status_code == 200
    applied = gw.admin("GET", "/status").json()["applied"]
    response = gw.push_delta(world.delta(applied, remove=(world.alice_key,)))
    assert response.status_code == 200
    assert response.json() == {"applied": applied + 1}
    assert gw.chat(world.alice_key).status_code == 401
    assert gw.chat(world.alice_second_key).status_code == 200
    assert gw.chat(world.bob_key, {"model": "other-model", "messages": []}).status_code == 200
    # The control plane's numbering moves on with the delta.
    world.next_number()
    # What is on disk (snapshot plus delta log) is the revision after the delta, so a
    # restart keeps the revocation.
    on_disk = RevisionStore(gw.state_dir)
    asyncio.run(on_disk.load(world.keys))
    assert on_disk.current is not None
    assert on_disk.number == applied + 1
    assert sha256(world.alice_key) not in on_disk.current.credentials
    assert sha256(world.alice_second_key) in on_disk.current.credentials


def test_key_added_by_delta_works_at_once(gw: Gateway, world: World) -> None:
    new_key = "portico_added_by_delta_" + "k" * 24
    applied = gw.admin("GET", "/status").json()["applied"]
    assert gw.chat(new_key).status_code == 401
    upsert = {sha256(new_key): Credential(id=99, consumer=ALICE)}
    assert gw.push_delta(world.delta(applied, upsert=upsert)).status_code == 200
    world.next_number()
    assert gw.chat(new_key).status_code == 200


def test_delta_on_another_base_asks_for_the_full_revision(gw: Gateway, world: World) -> None:
    applied = gw.admin("GET", "/status").json()["applied"]
    # The gateway missed the delta to applied + 1, so the next one does not fit.
    response = gw.push_delta(world.delta(applied + 1, remove=(world.alice_key,)))
    assert response.status_code == 409
    assert response.json() == {"error": "base_mismatch", "applied": applied}
    assert gw.chat(world.alice_key).status_code == 200


def test_delta_already_applied_is_a_no_op(gw: Gateway, world: World) -> None:
    applied = gw.admin("GET", "/status").json()["applied"]
    assert gw.push_delta(world.delta(applied, remove=(world.bob_key,))).status_code == 200
    world.next_number()
    again = gw.push_delta(world.delta(applied, remove=(world.alice_key,)))
    assert again.status_code == 200
    assert again.json() == {"applied": applied + 1}
    assert gw.chat(world.alice_key).status_code == 200
