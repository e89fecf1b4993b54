"""Caracal's official packages against Serval's Gateway: `caracalai` (the SDK's
`application_transport`), `caracalai-oauth` (a lifecycle mandate) and `caracalai-verify`
(the upstream's view of the resource mandate it receives).

Environment: STS_URL (the issuer), COORDINATOR_URL, GATEWAY_URL, ZONE_ID, APPLICATION_ID,
CLIENT_SECRET, RESOURCE. The resource routes to an echo upstream that answers with the
method, path, query and headers it received; its operations are GET /v1/tickets
(tickets:read) and POST /v1/tickets (tickets:write); the zone's policy grants role `agent`
tickets:read on it.
"""

import asyncio
import os
import sys

import httpx
from caracalai import Caracal
from caracalai_oauth import ExchangeOptions, OAuthClient
from caracalai_revocation import InMemoryRevocationStore
from caracalai_verify import authenticate

STS = os.environ["STS_URL"]
COORD = os.environ["COORDINATOR_URL"]
GW = os.environ["GATEWAY_URL"]
ZONE = os.environ["ZONE_ID"]
APP = os.environ["APPLICATION_ID"]
SECRET = os.environ["CLIENT_SECRET"]
RESOURCE = os.environ["RESOURCE"]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


async def main():
    c = Caracal.from_client_secret(
        coordinator_url=COORD,
        sts_url=STS,
        zone_id=ZONE,
        application_id=APP,
        client_secret=SECRET,
        resources=[RESOURCE],
        gateway_url=GW,
    )
    http = c.application_transport(RESOURCE, scopes=["tickets:read"], labels=["agent"])
    r = await http.get(f"{GW}/v1/tickets?limit=2", headers={"X-Request-Id": "sdk-call-1"})
    check(r.status_code == 200, f"a proxied call through application_transport answers 200 ({r.status_code})")
    check(r.headers.get("x-request-id") == "sdk-call-1", "the caller's X-Request-Id comes back")
    seen = r.json()
    headers = seen["headers"]
    check(seen["path"] == "/v1/tickets" and seen["query"] == "limit=2", "path and query reach the upstream")
    check(headers.get("x-request-id") == "sdk-call-1", "the caller's X-Request-Id reaches the upstream")
    check(not any(k.startswith("x-caracal-") for k in headers), "no X-Caracal-* header reaches the upstream")
    bearer = headers.get("authorization", "")
    check(bearer.startswith("Bearer "), "the upstream receives a bearer")
    verified = await authenticate(
        bearer[len("Bearer "):],
        issuer=STS,
        audience=RESOURCE,
        required_scopes=["tickets:read"],
        expected_zone_id=ZONE,
        revocations=InMemoryRevocationStore(),
    )
    check(verified.error is None, f"caracalai-verify accepts the use=resource mandate ({verified.error})")
    check(verified.principal is not None and verified.principal.client_id == APP, "its principal is the application")

    again = await http.get(f"{GW}/v1/tickets")
    check(again.status_code == 200, "every call mints a fresh single-use mandate")
    write = await http.post(f"{GW}/v1/tickets", json={"title": "t"})
    check(write.status_code == 403 and write.json()["error"] == "operation_not_permitted", f"POST with a read-only mandate is 403 ({write.status_code} {write.text})")

    async with httpx.AsyncClient() as raw:
        none = await raw.get(f"{GW}/v1/tickets", headers={"X-Caracal-Resource": RESOURCE})
        check(none.status_code == 401 and none.json()["error"] == "invalid_token", "no bearer is refused")
        bad = await raw.get(f"{GW}/v1/tickets", headers={"X-Caracal-Resource": RESOURCE, "Authorization": "Bearer x.y"})
        check(bad.status_code == 401 and bad.json()["error"] == "invalid_token", "a malformed bearer is refused")
        oauth = OAuthClient(STS, ZONE, APP)
        lifecycle = await oauth.exchange(
            "", RESOURCE, ExchangeOptions(client_secret=SECRET, scopes=["agent:lifecycle"], one_shot=True)
        )
        life = await raw.get(
            f"{GW}/v1/tickets",
            headers={"X-Caracal-Resource": RESOURCE, "Authorization": f"Bearer {lifecycle.access_token}"},
        )
        check(life.status_code == 401 and life.json()["error"] == "invalid_token", f"a lifecycle mandate is refused ({life.status_code} {life.text})")
    await http.aclose()
    await c.aclose()


asyncio.run(main())
