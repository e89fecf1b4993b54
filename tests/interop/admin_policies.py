"""Interop: Caracal's official admin client (`caracalai-admin` from PyPI) drives every
policy, policy-set, template and validation call it offers against a running Serval.

Run by tests/tests/sdk_interop.rs with CARACAL_API_URL and CARACAL_ADMIN_TOKEN set.
Exits non-zero (with a traceback) on the first broken expectation.
"""

from __future__ import annotations

import hashlib
import os
import time

from caracalai_admin import (
    AdminApiError,
    AdminClient,
    ResourceGrant,
    author_grants_document,
    ensure_active_policy_set,
    ensure_grants,
)

APP = "0198c2d5-0b7a-7f10-8e2c-5a1d3c9b7e01"


def doc(body: str) -> str:
    return f"# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\n{body}\n"


def expect_error(status: int, code: str, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except AdminApiError as err:
        assert (err.status, err.code) == (status, code), (err.status, err.code, err.body)
        return err
    raise AssertionError(f"expected {status} {code}")


def mint_input(zone: str, label: str, scopes: list[str]) -> dict:
    return {
        "schema_version": "2026-05-20",
        "principal": {"type": "Application", "id": APP, "zone_id": zone,
                      "agent_session_id": "s-1", "labels": [label]},
        "resource": {"type": "Resource", "id": "r1", "identifier": "resource://ledger",
                     "scopes": scopes},
        "action": {"id": "TokenExchange"},
        "delegation_edge": {"id": "e1", "scopes": scopes},
        "context": {"actor_claims": {}, "challenge_resolved": False,
                    "requested_scopes": scopes, "agent_session_id": "s-1",
                    "delegation_edge_id": "e1"},
    }


def main() -> None:
    client = AdminClient(
        api_url=os.environ["CARACAL_API_URL"],
        admin_token=os.environ["CARACAL_ADMIN_TOKEN"],
        retries=0,
    )
    zone = client.zones.create({"name": "sdk interop"})["id"]

    # Validation and templates.
    report = client.policies.validate(doc(f'app_ids := {{"bot": "{APP}"}}'))
    assert report["valid"] is True and report["preview"]["rules"] == ["app_ids"], report
    err = expect_error(422, "invalid_rego", client.policies.validate, doc("result := 1"))
    assert err.body["error_description"] == "data_document_must_not_define_result", err.body
    templates = client.policy_templates.list()
    assert [t["id"] for t in templates] == [
        "application-bindings", "resource-grants", "label-confinement", "zone-restriction"]
    assert client.policy_templates.get("label-confinement")["id"] == "label-confinement"
    expect_error(404, "policy_template_not_found", client.policy_templates.get, "nope")

    # Policies.
    bindings = client.policies.create(
        zone, {"name": "bindings", "content": doc(f'app_ids := {{"bot": "{APP}"}}')})
    grants_v1 = doc('grants := {"resource://ledger": {"application": "bot", '
                    '"roles": {"clerk": ["ledger:read"]}}}')
    grants = client.policies.create(zone, {"name": "grants", "content": grants_v1})
    grants_v2 = doc('grants := {"resource://ledger": {"application": "bot", '
                    '"roles": {"clerk": ["ledger:read", "ledger:write"]}}}')
    v2 = client.policies.add_version(zone, grants["id"], grants_v2)
    assert v2["version"] == 2, v2
    detail = client.policies.get(zone, grants["id"])
    assert [v["version"] for v in detail["versions"]] == [2, 1]
    assert detail["versions"][0]["content_sha256"] == hashlib.sha256(grants_v2.encode()).hexdigest()
    assert {p["name"] for p in client.policies.list(zone)} == {"bindings", "grants"}
    expect_error(422, "invalid_rego", client.policies.create, zone,
                 {"name": "bad", "content": "package other"})
    expect_error(409, "policy_name_conflict", client.policies.create, zone,
                 {"name": "bindings", "content": doc("risk := []")})
    scratch = client.policies.create(zone, {"name": "scratch", "content": doc("risk := []")})
    assert client.policies.delete(zone, scratch["id"]) is None
    expect_error(404, "policy_not_found", client.policies.get, zone, scratch["id"])

    # Policy sets: create, version, simulate, activate, status, delete.
    pset = client.policy_sets.create(zone, "main", description="by the SDK")
    manifest = [{"policy_version_id": bindings["version_id"]},
                {"policy_version_id": v2["version_id"]}]
    version = client.policy_sets.add_version(zone, pset["id"], manifest)
    assert [v["id"] for v in client.policy_sets.list_versions(zone, pset["id"])] == [version["version_id"]]
    expect_error(422, "invalid_policy_contract", client.policy_sets.add_version,
                 zone, pset["id"], [{"policy_version_id": "missing"}])
    sim = client.policy_sets.simulate(zone, pset["id"], version["version_id"],
                                      input=mint_input(zone, "clerk", ["ledger:write"]))
    assert sim["result"]["decision"] == "allow", sim
    assert sim["result"]["determining_policies"] == [{"policy": "caracal-bot-mint"}], sim
    act = client.policy_sets.activate(zone, pset["id"], version["version_id"])
    assert act["activated"] is True and act["version_id"] == version["version_id"], act
    deadline = time.time() + 15
    while True:
        status = client.policy_sets.activation_status(
            zone, pset["id"], version_id=version["version_id"], outbox_id=act["outbox_id"])
        if status["propagation_status"] == "loaded":
            break
        assert time.time() < deadline, status
        time.sleep(0.1)
    assert client.policy_sets.get(zone, pset["id"])["active_version_id"] == version["version_id"]
    other = client.policy_sets.create(zone, "other")
    assert client.policy_sets.delete(zone, other["id"]) is None
    expect_error(404, "policy_set_not_found", client.policy_sets.get, zone, other["id"])

    # The reconcilers: idempotent, and a content change becomes a new active version.
    content = doc(f'app_ids := {{"bot": "{APP}"}}\n\nrisk := [{{"scope": "ledger:write", "tier": "high"}}]')
    ensure_active_policy_set(client, zone, policy_name="reconciled", set_name="reconciled-set",
                             content=content)
    sets = {s["name"]: s for s in client.policy_sets.list(zone)}
    first = sets["reconciled-set"]["active_version_id"]
    assert first, sets
    # The set activation flipped "main" off: one active set per zone.
    assert sets["main"]["active_version_id"] is None, sets
    ensure_active_policy_set(client, zone, policy_name="reconciled", set_name="reconciled-set",
                             content=content)
    sets = {s["name"]: s for s in client.policy_sets.list(zone)}
    assert sets["reconciled-set"]["active_version_id"] == first, "unchanged content made a new version"
    ensure_active_policy_set(client, zone, policy_name="reconciled", set_name="reconciled-set",
                             content=content + "\n")
    sets = {s["name"]: s for s in client.policy_sets.list(zone)}
    assert sets["reconciled-set"]["active_version_id"] != first

    # ensure_grants authors compact one-line JSON (long lines) in a data document.
    many = [ResourceGrant(application_id=APP, resource_identifier=f"resource://svc-{i:03}",
                          scopes=[f"svc{i}:read", f"svc{i}:write"], role="clerk")
            for i in range(60)]
    assert len(max(author_grants_document(many).splitlines(), key=len)) > 1024
    ensure_grants(client, zone, grants=many)
    gset = {s["name"]: s for s in client.policy_sets.list(zone)}["application-grant-policy"]
    sim = client.policy_sets.simulate(zone, gset["id"], gset["active_version_id"], input={
        **mint_input(zone, "clerk", ["svc7:write"]),
        "resource": {"type": "Resource", "id": "r7", "identifier": "resource://svc-007",
                     "scopes": ["svc7:write"]},
    })
    assert sim["result"]["decision"] == "allow", sim
    assert sim["result"]["determining_policies"] == [{"policy": f"caracal-{APP}-mint"}], sim
    print("admin policy interop: ok")


if __name__ == "__main__":
    main()
