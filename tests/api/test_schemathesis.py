"""Schemathesis against the live API: every operation, valid and invalid data.

Checks: no server errors, documented status codes, content types and response bodies that
match the schema. Examples per operation and mode: SCHEMATHESIS_EXAMPLES (default 40).
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from integrations.services.management import management_token_create
from tests.conftest import incoming_body

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "40"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.django_db(transaction=True)
def test_schemathesis_finds_no_failures(live_server, engine_api, partner_api, partner):
    from django.conf import settings as django_settings

    django_settings.PORTAL_PARTNER_RATE = "100000/second"
    # given a real ticket, so some generated requests get past the lookups
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    # (the management API with an admin token: every operation is allowed to it)
    _, manage_token = management_token_create(tenant=partner.tenant, role="admin")
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if "/manage/" in operation.path:
            current_key = manage_token
        else:
            current_key = engine_api.key if "/engine/" in operation.path else partner_api.key
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
            )
            def exercise(case):
                nonlocal calls
                calls += 1
                case.call_and_validate(
                    base_url=live_server.url,
                    headers={"Authorization": f"Bearer {current_key}"},
                    checks=CHECKS,
                )

            try:
                exercise()
            # schemathesis reports several failures as one exception group: collect them all
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(
                    f"{operation.method.upper()} {operation.path} [{mode}]: {str(exc)[:1500]}"
                )
    print(f"schemathesis: {calls} requests, {len(failures)} failures")
    assert calls >= 14 * min(EXAMPLES, 5)
    assert not failures, "\n\n".join(failures)
