"""Caracal's official OAuth and verifier clients against Serval's STS (bootstrap class).

Environment: STS_URL (also the issuer), ZONE_ID, APPLICATION_ID, CLIENT_SECRET, RESOURCE,
STS_ADMIN_TOKEN. The zone's active policy set grants RESOURCE to the application.
"""

import asyncio
import base64
import json
import os
import sys

import httpx
from caracalai_oauth import AccessDenied, ExchangeOptions, OAuthClient
from caracalai_oauth.exchanger import ClientCredentials, ClientSecretExchanger
from caracalai_revocation import InMemoryRevocationStore
from caracalai_verify import authenticate

STS = os.environ["STS_URL"]
ZONE = os.environ["ZONE_ID"]
APP = os.environ["APPLICATION_ID"]
SECRET = os.environ["CLIENT_SECRET"]
RESOURCE = os.environ["RESOURCE"]
ADMIN = os.environ["STS_ADMIN_TOKEN"]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def claims(token):
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def verify(token):
    return await authenticate(
        token,
        issuer=STS,
        audience=STS,
        required_scopes=["agent:lifecycle"],
        expected_zone_id=ZONE,
        revocations=InMemoryRevocationStore(),
        required_use="session",
    )


async def main():
    client = OAuthClient(STS, ZONE, APP)
    opts = ExchangeOptions(client_secret=SECRET, scopes=["agent:lifecycle"], one_shot=True)
    token = await client.exchange("", RESOURCE, opts)
    check(token.access_token.count(".") == 2, "OAuthClient.exchange mints a bootstrap mandate")
    check(token.expires_in == 900, "expires_in is the default lifetime")

    result = await verify(token.access_token)
    check(result.error is None, f"caracalai-verify accepts it with required_use=session ({result.error})")
    principal = result.principal
    check(principal is not None and principal.client_id == APP, "the principal is the application")

    # The default verifier accepts only resource mandates.
    default = await authenticate(
        token.access_token, STS, STS, None, ZONE, InMemoryRevocationStore()
    )
    check(default.error is not None, "a session mandate is not a resource mandate")

    # A payload-tampered copy is refused.
    head, payload, sig = token.access_token.split(".")
    body = claims(token.access_token)
    body["scope"] = "agent:lifecycle tickets:read"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    tampered = await verify(f"{head}.{forged}.{sig}")
    check(tampered.error is not None and tampered.error.code == "invalid_token", "a tampered payload is refused")

    # A wrong secret is AccessDenied.
    try:
        await client.exchange(
            "", RESOURCE, ExchangeOptions(client_secret="cs_wrong", scopes=["agent:lifecycle"], one_shot=True)
        )
        check(False, "a wrong secret is refused")
    except AccessDenied as err:
        check(err.http_status == 401, "a wrong secret is AccessDenied (401)")

    # A business scope without a Session or Delegation is refused.
    try:
        await client.exchange(
            "", RESOURCE, ExchangeOptions(client_secret=SECRET, scopes=["tickets:read"], one_shot=True)
        )
        check(False, "a business scope without Session/Delegation is refused")
    except AccessDenied:
        check(True, "a business scope without Session/Delegation is AccessDenied")

    # The SDK's own exchanger (sync) takes the same path.
    exchanger = ClientSecretExchanger(
        sts_url=STS,
        credentials=lambda: ClientCredentials(zone_id=ZONE, application_id=APP, client_secret=SECRET),
        resources=[RESOURCE],
    )
    lifecycle = exchanger.get_token()
    check(claims(lifecycle)["use"] == "session", "ClientSecretExchanger.get_token mints a session mandate")

    # A mandate minted right after a rotation verifies in a verifier that cached the JWKS
    # before it: the rotated-in key is published first and signs only later.
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{STS}/internal/zones/{ZONE}/signing-key/rotate",
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        check(r.status_code == 200, f"rotation answers 200 ({r.status_code} {r.text})")
    after = await client.exchange("", RESOURCE, opts)
    result = await verify(after.access_token)
    check(result.error is None, f"a mandate minted right after a rotation verifies ({result.error})")
    await client.aclose()


asyncio.run(main())
