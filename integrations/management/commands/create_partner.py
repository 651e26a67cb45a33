from integrations.management.commands._base import JsonCommand
from integrations.services.accounts import tenant_get
from integrations.services.partners import partner_create


class Command(JsonCommand):
    help = "Create a partner of a tenant; prints partnerId, apiKey and signingSecret (once)."

    def add_arguments(self, parser):
        parser.add_argument("--owner", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--base-url", required=True)
        parser.add_argument("--incoming-path", required=True)
        parser.add_argument("--send-path", required=True)
        parser.add_argument("--channels", default="", help="Comma-separated; empty = all.")

    def run(self, **options):
        tenant = tenant_get(owner=options["owner"])
        partner, api_key, secret = partner_create(
            tenant=tenant,
            name=options["name"],
            base_url=options["base_url"],
            incoming_message_path=options["incoming_path"],
            send_message_path=options["send_path"],
            channels=options["channels"].split(","),
        )
        return {
            "partnerId": partner.pk,
            "name": partner.name,
            "owner": tenant.owner,
            "apiKey": api_key,
            "signingSecret": secret,
        }
