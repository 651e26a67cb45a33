from integrations.management.commands._base import JsonCommand
from integrations.services.accounts import tenant_get, user_create


class Command(JsonCommand):
    help = "Create a staff user with a role in a tenant; prints a generated password once."

    def add_arguments(self, parser):
        parser.add_argument("--owner", required=True)
        parser.add_argument("--username", required=True)
        parser.add_argument("--role", required=True, choices=["admin", "support"])
        parser.add_argument("--email", default="")

    def run(self, **options):
        tenant = tenant_get(owner=options["owner"])
        user, password = user_create(
            tenant=tenant,
            username=options["username"],
            role=options["role"],
            email=options["email"],
        )
        return {
            "username": user.username,
            "owner": tenant.owner,
            "role": options["role"],
            "password": password,
        }
