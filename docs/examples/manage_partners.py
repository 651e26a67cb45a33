#!/usr/bin/env python3
"""The management API in one script (docs/API.md §9): create a partner, send it a test event,
list the tenant's dead deliveries. Standard library only.

    PORTAL_URL=http://127.0.0.1:8000 PORTAL_MANAGEMENT_TOKEN=mgt_… \\
        python3 docs/examples/manage_partners.py https://desk.example.com/hooks

Get a token from the admin (Management tokens → Add) or on the server with
`python manage.py create_management_token --owner <tenant ID> --role admin`.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

BASE = os.environ.get("PORTAL_URL", "http://127.0.0.1:8000").rstrip("/") + "/api/v1/manage"
if not BASE.startswith(("http://", "https://")):
    sys.exit("PORTAL_URL must be an http:// or https:// URL")
TOKEN = os.environ["PORTAL_MANAGEMENT_TOKEN"]


def call(method: str, path: str, body: dict | None = None) -> dict:
    """One request; the JSON answer, or the error envelope printed and exit 1."""
    request = urllib.request.Request(  # noqa: S310 - BASE is checked to be http(s) above
        BASE + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        print(f"{method} {path}: {error.code} {error.read().decode()}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    base_url = sys.argv[1] if len(sys.argv) > 1 else "https://desk.example.com/hooks"
    partner = call(
        "POST",
        "/partners",
        {
            "name": "Example desk",
            "baseUrl": base_url,
            "incomingMessagePath": "/incoming",
            "sendMessagePath": "/send",
        },
    )
    print(f"partner {partner['partnerId']} created")
    print(f"  API key (shown once):        {partner['apiKey']}")
    print(f"  signing secret (shown once): {partner['signingSecret']}")
    probe = call("POST", f"/partners/{partner['partnerId']}/test")
    print(f"test event: {probe['outcome']}, HTTP {probe['statusCode']}, {probe['latencyMs']} ms")
    path = "/deliveries?status=dead&limit=100"
    dead = 0
    while path:
        page = call("GET", path)
        for d in page["results"]:
            dead += 1
            print(f"dead: delivery {d['deliveryId']} ticket {d['ticketNumber']}: {d['lastError']}")
        path = page["next"].split("/api/v1/manage", 1)[1] if page["next"] else ""
    print(f"{dead} dead deliveries")


if __name__ == "__main__":
    main()
