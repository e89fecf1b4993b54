"""Interop: Caracal's official admin client (`caracalai-admin` from PyPI) drives every
application, provider, resource, grant, provider-connection and admin-audit call it offers,
and its reconcilers (ensure_*), against a running Serval.

Run by tests/tests/sdk_interop.rs with CARACAL_API_URL and CARACAL_ADMIN_TOKEN set.
Exits non-zero (with a traceback) on the first broken expectation.
"""

from __future__ import annotations

import os
import time

from caracalai_admin import (
    AdminApiError,
    AdminClient,
    GovernedUpstream,
    GovernedUpstreamGrant,
    GovernedUpstreamProvider,
    GovernedUpstreamResource,
    ensure_api_key_provider,
    ensure_application,
    ensure_client_credentials_provider,
    ensure_governed_upstreams,
    ensure_resource,
)

SECRET_A = "sk-interop-" + "a" * 40
SECRET_B = "sk-interop-" + "b" * 40


def expect_error(status: int, code: str, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except AdminApiError as err:
        assert (err.status, err.code) == (status, code), (err.status, err.code, err.body)
        return err
    raise AssertionError(f"expected {status} {code}")


def applications(client: AdminClient, zone: str) -> str:
    apps = client.applications
    created = apps.create(zone, {"name": "billing-agent", "registration_method": "managed",
                                 "traits": ["team:billing"]})
    app_id = created["id"]
    assert created["client_secret"].startswith("cs_"), created
    assert created["registration_method"] == "managed"
    got = apps.get(zone, app_id)
    assert got["name"] == "billing-agent" and "client_secret" not in got, got
    listed = apps.list(zone)
    assert [a["id"] for a in listed] == [app_id], listed
    assert all("client_secret" not in a for a in listed)
    patched = apps.patch(zone, app_id, {"traits": ["team:billing", "tier:gold"]})
    assert patched["traits"] == ["team:billing", "tier:gold"], patched
    rotated = apps.rotate_secret(zone, app_id)
    assert rotated["client_secret"].startswith("cs_") and rotated["client_secret"] != created["client_secret"]
    revealed = apps.get_client_secret(zone, app_id)
    assert revealed["client_secret"] == rotated["client_secret"], revealed
    expect_error(409, "application_name_taken", apps.create, zone,
                 {"name": "BILLING-AGENT", "registration_method": "managed"})
    expect_error(404, "application_not_found", apps.get, zone, "no-such-app")
    expect_error(400, "no_fields", apps.patch, zone, app_id, {})

    # DCR follows the zone's gate.
    expect_error(403, "dcr_disabled", apps.dcr, zone, {"name": "self-registered"})
    assert client.zones.dcr_status(zone)["dcr_enabled"] is False
    client.zones.patch(zone, {"dcr_enabled": True})
    dcr = apps.dcr(zone, {"name": "self-registered", "expires_in": 600})
    assert dcr["registration_method"] == "dcr" and dcr["client_secret"], dcr
    assert dcr["expires_at"], dcr

    throwaway = apps.create(zone, {"name": "throwaway", "registration_method": "managed"})
    assert apps.delete(zone, throwaway["id"]) is None
    expect_error(404, "application_not_found", apps.get, zone, throwaway["id"])

    # The reconciler: creates, then converges traits and re-seals the given secret.
    ensured = ensure_application(client, zone, name="ensured-agent", traits=["a:b"],
                                 client_secret=SECRET_A)
    again = ensure_application(client, zone, name="ensured-agent", traits=["a:b", "c:d"],
                               client_secret=SECRET_B)
    assert ensured == again
    assert sorted(apps.get(zone, ensured)["traits"]) == ["a:b", "c:d"]
    try:
        ensure_application(client, zone, name="self-registered", traits=[],
                           client_secret=SECRET_A)
        raise AssertionError("a DCR application is not a managed credential")
    except RuntimeError:
        pass
    return app_id


def providers(client: AdminClient, zone: str) -> str:
    provs = client.providers
    created = provs.create(zone, {"name": "Stripe API", "kind": "api_key",
                                  "config_json": {"header_name": "X-Api-Key",
                                                  "auth_location": "header",
                                                  "api_key": SECRET_A}})
    pid = created["id"]
    assert created["identifier"] == "provider://stripe-api", created
    assert SECRET_A not in repr(created)
    got = provs.get(zone, pid)
    assert got["config_json"] == {"header_name": "X-Api-Key", "auth_location": "header"}, got
    assert [p["id"] for p in provs.list(zone)] == [pid]
    patched = provs.patch(zone, pid, {"name": "Stripe"})
    assert patched["name"] == "Stripe"
    expect_error(409, "provider_identifier_conflict", provs.create, zone,
                 {"identifier": "provider://stripe-api", "kind": "none"})
    expect_error(400, "invalid_provider", provs.create, zone, {"kind": "none"})
    expect_error(404, "provider_not_found", provs.get, zone, "nope")
    spare = provs.create(zone, {"name": "spare", "kind": "none"})
    assert provs.delete(zone, spare["id"]) is None
    expect_error(404, "provider_not_found", provs.get, zone, spare["id"])

    # Reconcilers: key given → create then re-seal; no key → public config patch only.
    key_pid = ensure_api_key_provider(client, zone, name="Maps", identifier="provider://maps",
                                      public_config={"header_name": "X-Maps-Key",
                                                     "auth_location": "header"},
                                      api_key=SECRET_A)
    assert key_pid is not None
    same = ensure_api_key_provider(client, zone, name="Maps", identifier="provider://maps",
                                   public_config={"header_name": "X-Maps-Key-2",
                                                  "auth_location": "header"})
    assert same == key_pid
    assert provs.get(zone, key_pid)["config_json"]["header_name"] == "X-Maps-Key-2"
    assert ensure_api_key_provider(client, zone, name="Ghost", identifier="provider://ghost",
                                   public_config={}) is None
    cc = ensure_client_credentials_provider(
        client, zone, name="IdP", identifier="provider://idp",
        public_config={"token_endpoint": "https://idp.example/oauth/token", "client_id": "serval",
                       "scopes": ["read"]},
        client_secret=SECRET_B)
    assert cc is not None
    assert provs.get(zone, cc)["kind"] == "oauth2_client_credentials"
    assert SECRET_B not in repr(provs.list(zone))
    return pid


def resources(client: AdminClient, zone: str, pid: str) -> str:
    res = client.resources
    created = res.create(zone, {"name": "Billing API", "scopes": ["invoices:read", "invoices:write"],
                                "upstream_url": "https://billing.example",
                                "credential_provider_id": pid,
                                "operations": [{"method": "GET", "path": "/invoices",
                                                "scope": "invoices:read"}]})
    rid = created["id"]
    assert created["identifier"] == "resource://billing-api", created
    assert res.get(zone, rid)["credential_provider_id"] == pid
    assert [r["id"] for r in res.list(zone)] == [rid]
    patched = res.patch(zone, rid, {"scopes": ["invoices:read", "invoices:write", "refunds:write"]})
    assert "refunds:write" in patched["scopes"]
    bound = {"upstream_url": "https://spare.example", "credential_provider_id": pid}
    expect_error(409, "resource_identifier_conflict", res.create, zone,
                 {"name": "x", "identifier": "resource://billing-api", "scopes": ["s"], **bound})
    expect_error(400, "credential_provider_required", res.create, zone,
                 {"name": "unbound", "scopes": ["s"], "upstream_url": "https://u.example"})
    expect_error(404, "resource_not_found", res.get, zone, "nope")
    spare = res.create(zone, {"name": "spare", "scopes": ["s"], **bound})
    assert res.delete(zone, spare["id"]) is None

    # The reconciler patches only on drift.
    first = ensure_resource(client, zone, name="Ledger", identifier="resource://ledger",
                            scopes=["ledger:read"], upstream_url="https://ledger.example",
                            credential_provider_id=pid)
    steady = ensure_resource(client, zone, name="Ledger", identifier="resource://ledger",
                             scopes=["ledger:read"], upstream_url="https://ledger.example",
                             credential_provider_id=pid)
    assert steady["updated_at"] == first["updated_at"], (first, steady)
    drifted = ensure_resource(client, zone, name="Ledger", identifier="resource://ledger",
                              scopes=["ledger:read", "ledger:write"],
                              upstream_url="https://ledger.example", credential_provider_id=pid)
    assert sorted(drifted["scopes"]) == ["ledger:read", "ledger:write"]
    return rid


def grants(client: AdminClient, zone: str, app_id: str, rid: str, pid: str) -> None:
    g = client.grants
    created = g.create(zone, {"application_id": app_id, "user_id": "user-1",
                              "resource_id": rid, "scopes": ["invoices:read"]})
    gid = created["id"]
    assert created["status"] == "active", created
    assert g.get(zone, gid)["scopes"] == ["invoices:read"]
    rows = g.list(zone, {"subject_id": "user-1", "scopes": ["invoices:read"]})
    assert [r["id"] for r in rows] == [gid], rows
    assert rows[0]["application_name"] == "billing-agent" and rows[0]["provider_id"] == pid
    assert g.list(zone, {"user_id": "someone-else"}) == []
    expect_error(403, "grant_scopes_exceed_resource", g.create, zone,
                 {"application_id": app_id, "user_id": "u", "resource_id": rid,
                  "scopes": ["payroll:write"]})
    assert g.revoke(zone, gid) is None
    assert g.get(zone, gid)["status"] == "revoked"
    expect_error(404, "grant_not_found", g.get, zone, "nope")


def governed(client: AdminClient, zone: str, app_id: str) -> None:
    results = ensure_governed_upstreams(client, zone, upstreams=[
        GovernedUpstream(
            provider=GovernedUpstreamProvider(name="Weather", identifier="provider://weather",
                                              public_config={"header_name": "X-Key",
                                                             "auth_location": "header"},
                                              api_key=SECRET_A),
            resource=GovernedUpstreamResource(name="Weather", identifier="resource://weather",
                                              scopes=["forecast:read"],
                                              upstream_url="https://weather.example"),
            grants=[GovernedUpstreamGrant(application_id=app_id, scopes=["forecast:read"])],
        )
    ])
    assert len(results) == 1
    assert results[0].resource["credential_provider_id"] == results[0].provider_id


def provider_connections(client: AdminClient, zone: str) -> None:
    pid = client.providers.create(zone, {
        "name": "GitHub", "kind": "oauth2_authorization_code",
        "config_json": {"authorization_endpoint": "https://github.example/login/oauth/authorize",
                        "token_endpoint": "https://github.example/login/oauth/access_token",
                        "redirect_uri": "https://serval.example/callback",
                        "client_id": "serval", "client_secret": SECRET_B, "scopes": ["repo"]},
    })["id"]
    conns = client.provider_connections
    created = conns.create(zone, {"provider_id": pid, "access_token": SECRET_A})
    assert created["subject_id"] == "caracal:shared" and created["status"] == "active", created
    assert SECRET_A not in repr(created)
    upserted = conns.create(zone, {"provider_id": pid, "access_token": SECRET_B,
                                   "refresh_token": SECRET_A})
    assert upserted["id"] == created["id"], upserted
    started = conns.authorize_oauth(zone, {"provider_id": pid, "subject_id": "alice"})
    assert started["authorization_url"].startswith("https://github.example/login/oauth/authorize?")
    assert "code_challenge_method=S256" in started["authorization_url"]
    assert len(started["state"]) == 43 and started["expires_at"]
    revoked = conns.revoke(zone, {"provider_id": pid})
    assert revoked["status"] == "revoked" and revoked["upstream_revocation"] == "unsupported"
    expect_error(404, "provider_connection_not_found", conns.revoke, zone, {"provider_id": pid})
    expect_error(400, "invalid_provider_connection", conns.create, zone, {"provider_id": pid})


def audit_ledger(client: AdminClient, zone: str, app_id: str) -> None:
    """A secret reveal reaches the audit ledger (relay → topic → ingester) and is read back
    through every audit call the client offers."""
    tagged = client.with_default_headers({"x-request-id": "interop-reveal-1"})
    tagged.applications.get_client_secret(zone, app_id)
    rows = []
    for _ in range(100):
        rows = client.audit.list(zone, {"event_type": "credential_revealed",
                                        "request_id": "interop-reveal-1"})
        if rows:
            break
        time.sleep(0.1)
    assert len(rows) == 1, rows
    assert rows[0]["metadata_json"]["application_id"] == app_id, rows[0]
    events = client.audit.by_request(zone, "interop-reveal-1")
    assert [e["event_type"] for e in events] == ["credential_revealed"], events
    explained = client.audit.explain(zone, "interop-reveal-1")
    assert explained["final_decision"] == "allow" and explained["denied"] == [], explained
    expect_error(404, "request_not_found", client.audit.by_request, zone, "never-seen")
    expect_error(400, "invalid_query", client.audit.list, zone, {"decision": "maybe"})


def admin_audit(client: AdminClient, zone: str) -> None:
    rows = client.admin_audit.list(zone, {"entity_type": "applications", "method": "POST"})
    assert rows and all(r["entity_type"] == "applications" for r in rows), rows
    assert all(r["method"] == "POST" for r in rows)
    rotated = [r for r in client.admin_audit.list(zone, {"limit": 1000})
               if r["action"].endswith("/rotate-secret")]
    assert rotated, "the rotation is recorded"
    seqs = [int(r["chain_seq"]) for r in client.admin_audit.list(zone, {"limit": 1000})]
    assert sorted(seqs) == list(range(1, len(seqs) + 1)), seqs
    for secret in (SECRET_A, SECRET_B):
        assert secret not in repr(client.admin_audit.list(zone, {"limit": 1000}))
    expect_error(400, "invalid_query", client.admin_audit.list, zone, {"method": "GET"})


def main() -> None:
    client = AdminClient(
        api_url=os.environ["CARACAL_API_URL"],
        admin_token=os.environ["CARACAL_ADMIN_TOKEN"],
        retries=0,
    )
    zone = client.zones.create({"name": "catalog interop"})["id"]
    app_id = applications(client, zone)
    pid = providers(client, zone)
    rid = resources(client, zone, pid)
    grants(client, zone, app_id, rid, pid)
    governed(client, zone, app_id)
    provider_connections(client, zone)
    audit_ledger(client, zone, app_id)
    admin_audit(client, zone)
    print("catalog interop OK")


if __name__ == "__main__":
    main()
