from integrations.management.commands._base import JsonCommand
from integrations.services.accounts import secrets_reencrypt


class Command(JsonCommand):
    help = (
        "Re-encrypt every stored secret with the first key of PORTAL_ENCRYPTION_KEYS "
        "(run after putting a new key first, before dropping the old one)."
    )

    def run(self, **options):
        return secrets_reencrypt()
