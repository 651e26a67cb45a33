"""Create (once) a demo tenant, partner, engine key and admin login, and print them.

Idempotent: the credentials are kept in var/demo-credentials.json (never committed) and
re-used while they still work; anything missing or revoked is created again.
"""

import json
import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from integrations.errors import PortalError
from integrations.management.commands._base import JsonCommand
from integrations.models import ApiKey, Partner, Tenant, TenantMembership
from integrations.services.accounts import api_key_create, principal_authenticate, tenant_create
from integrations.services.partners import partner_create

DEMO_OWNER = "82ab0fd5cfd1e80d1ff97c0cfc9aa9e2"
DEMO_USERNAME = "demo-admin"


def _works(raw: str) -> bool:
    try:
        principal_authenticate(raw)
    except PortalError:
        return False
    return True


class Command(JsonCommand):
    help = "Create the demo tenant, partner, keys and admin login (idempotent); print them."

    def run(self, **options):
        path = settings.VAR_DIR / "demo-credentials.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        # The demo receivers live on the running portal: `make run` passes its PORT; run by
        # hand without one, the port of the last `make run` is kept.
        if "PORT" not in os.environ and saved.get("baseUrl"):
            base = saved["baseUrl"]
        else:
            base = f"http://127.0.0.1:{settings.PORT}"
        saved["baseUrl"] = base
        with transaction.atomic():
            tenant = Tenant.objects.filter(owner=DEMO_OWNER).first() or tenant_create(
                owner=DEMO_OWNER, name="Demo Tenant"
            )
            tenant.engine_base_url = f"{base}/demo/engine"
            tenant.engine_send_message_path = "/messages"
            tenant.engine_command_path = "/commands"
            tenant.save()
            partner = Partner.objects.filter(tenant=tenant, name="Demo Partner").first()
            if partner is None:
                partner, saved["partnerKey"], saved["signingSecret"] = partner_create(
                    tenant=tenant,
                    name="Demo Partner",
                    base_url=f"{base}/demo/partner",
                    incoming_message_path="/incoming",
                    send_message_path="/send",
                )
            elif not _works(saved.get("partnerKey", "")):
                _, saved["partnerKey"] = api_key_create(
                    kind=ApiKey.Kind.PARTNER, partner=partner, name="demo"
                )
            partner.base_url = f"{base}/demo/partner"
            partner.save(update_fields=["base_url"])
            if not _works(saved.get("engineKey", "")):
                _, saved["engineKey"] = api_key_create(
                    kind=ApiKey.Kind.ENGINE, tenants=[tenant], name="demo"
                )
            user_model = get_user_model()
            user = user_model.objects.filter(username=DEMO_USERNAME).first()
            if user is None or not user.check_password(saved.get("password", "")):
                saved["password"] = secrets.token_urlsafe(9)
                user = user or user_model(username=DEMO_USERNAME)
                user.is_staff = user.is_superuser = True
                user.set_password(saved["password"])
                user.save()
            TenantMembership.objects.get_or_create(
                user=user, tenant=tenant, defaults={"role": TenantMembership.Role.ADMIN}
            )
        path.write_text(json.dumps(saved, indent=2))
        path.chmod(0o600)
        return {
            "adminUrl": f"{base}/admin/",
            "apiDocsUrl": f"{base}/api/docs/",
            "username": DEMO_USERNAME,
            "password": saved["password"],
            "owner": tenant.owner,
            "partnerId": partner.pk,
            "apiKey": saved["partnerKey"],
            "signingSecret": saved.get("signingSecret", ""),
            "engineApiKey": saved["engineKey"],
        }
