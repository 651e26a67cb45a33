from integrations.management.commands._base import JsonCommand
from integrations.services.accounts import tenant_create


class Command(JsonCommand):
    help = "Create a tenant; prints it as JSON."

    def add_arguments(self, parser):
        parser.add_argument("--owner", required=True, help="The Tenant ID the engine sends.")
        parser.add_argument("--name", required=True)
        parser.add_argument("--time-zone", default="Asia/Jakarta")

    def run(self, **options):
        tenant = tenant_create(
            owner=options["owner"], name=options["name"], time_zone=options["time_zone"]
        )
        return {"owner": tenant.owner, "name": tenant.name, "timeZone": tenant.time_zone}
