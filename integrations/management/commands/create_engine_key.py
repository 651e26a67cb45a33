from integrations.management.commands._base import JsonCommand
from integrations.models import ApiKey
from integrations.services.accounts import api_key_create, tenant_get


class Command(JsonCommand):
    help = "Create an engine API key, for the named tenants or (none named) for every tenant."

    def add_arguments(self, parser):
        parser.add_argument(
            "--owner",
            action="append",
            default=[],
            help="A tenant the key acts for; repeat for several.",
        )
        parser.add_argument("--name", default="")

    def run(self, **options):
        tenants = [tenant_get(owner=owner) for owner in options["owner"]]
        key, raw = api_key_create(kind=ApiKey.Kind.ENGINE, tenants=tenants, name=options["name"])
        return {"apiKey": raw, "prefix": key.prefix, "owners": [t.owner for t in tenants] or "all"}
