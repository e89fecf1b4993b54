"""Interop: Caracal's official admin client (`caracalai-admin` from PyPI) reads authority
records and sessions and lists, reads and decides approvals against a running Serval.

Run by tests/tests/sdk_interop.rs with CARACAL_API_URL, CARACAL_ADMIN_TOKEN and ZONE_ID
set, after the test produced into the zone (as the STS and the Coordinator do): authority
records ar-1 (alice, user) and ar-2 (app-1, application); sessions s-root and its child
s-child; approval holds h-1, h-2 (operator class), h-3 (subject class).
Exits non-zero (with a traceback) on the first broken expectation.
"""

from __future__ import annotations

import os

from caracalai_admin import AdminApiError, AdminClient


def expect_error(status: int, code: str, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except AdminApiError as err:
        assert (err.status, err.code) == (status, code), (err.status, err.code, err.body)
        return err
    raise AssertionError(f"expected {status} {code}")


def main() -> None:
    zone = os.environ["ZONE_ID"]
    client = AdminClient(
        api_url=os.environ["CARACAL_API_URL"],
        admin_token=os.environ["CARACAL_ADMIN_TOKEN"],
        retries=0,
    )

    records = client.authority_records.list(zone)
    assert [r["authority_record_id"] for r in records] == ["ar-2", "ar-1"], records
    users = client.authority_records.list(zone, {"kind": "user", "status": "active"})
    assert [r["subject_id"] for r in users] == ["alice"], users
    assert users[0]["federated_user_issuer"] == "https://idp.example", users
    one = client.authority_records.list(zone, {"authority_record_id": "ar-2", "limit": 1})
    assert one[0]["authority_record_type"] == "application", one
    expect_error(400, "invalid_query", client.authority_records.list, zone, {"status": "x"})

    sessions = client.sessions.list(zone)
    assert [s["session_id"] for s in sessions] == ["s-child", "s-root"], sessions
    root = sessions[1]
    assert root["child_count"] == 1 and root["lifecycle"] == "service", root
    children = client.sessions.list(zone, {"parent_session_id": "s-root"})
    assert [s["session_id"] for s in children] == ["s-child"], children
    labelled = client.sessions.list(zone, {"label": "team:a", "status": "active"})
    assert [s["session_id"] for s in labelled] == ["s-root"], labelled
    expect_error(400, "invalid_query", client.sessions.list, zone, {"lifecycle": "cron"})

    holds = client.approvals.list(zone)
    assert sorted(h["id"] for h in holds) == ["h-1", "h-2", "h-3"], holds
    assert all(h["state"] == "pending" for h in holds), holds
    got = client.approvals.get(zone, "h-1")
    assert got["approver_class"] == "operator" and got["binding"] == "b-1", got
    expect_error(404, "approval_not_found", client.approvals.get, zone, "h-none")

    approved = client.approvals.approve(zone, "h-1", reason="ticket OPS-1")
    assert approved["state"] == "approved" and approved["rejected_at"] is None, approved
    assert approved["approver_subject_id"].startswith("admin:"), approved
    rejected = client.approvals.reject(zone, "h-2")
    assert rejected["state"] == "rejected" and rejected["satisfied_at"] is None, rejected
    err = expect_error(409, "approval_not_decidable", client.approvals.approve, zone, "h-2")
    assert err.body.get("state") == "rejected", err.body
    expect_error(403, "subject_approval_required", client.approvals.reject, zone, "h-3")
    expect_error(404, "approval_not_found", client.approvals.approve, zone, "h-none")
    assert client.approvals.get(zone, "h-1")["decision_reason"] == "ticket OPS-1"
    states = sorted(h["state"] for h in client.approvals.list(zone))
    assert states == ["approved", "pending", "rejected"], states
    print("admin_runtime: ok")


if __name__ == "__main__":
    main()
