from integrations.management.commands._base import JsonCommand
from integrations.services.accounts import tenant_get
from integrations.services.management import management_token_create


class Command(JsonCommand):
    help = (
        "Create a management-API token of a tenant (SPEC §8); prints token (once), tokenId "
        "and role."
    )

    def add_arguments(self, parser):
        parser.add_argument("--owner", required=True)
        parser.add_argument("--role", required=True, choices=["admin", "support"])
        parser.add_argument("--name", default="")

    def run(self, **options):
        tenant = tenant_get(owner=options["owner"])
        token, raw = management_token_create(
            tenant=tenant, role=options["role"], name=options["name"]
        )
        return {
            "token": raw,
            "tokenId": token.pk,
            "prefix": token.prefix,
            "role": token.role,
            "owner": tenant.owner,
        }
