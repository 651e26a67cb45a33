"""Shared plumbing for the portal's scriptable commands: JSON out, clear errors, exit 1."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from integrations.errors import PortalError


class JsonCommand(BaseCommand):
    """A command whose `run` returns a dict printed as one JSON object on stdout.

    A PortalError becomes a CommandError: the message on stderr and exit status 1.
    """

    def run(self, **options: Any) -> dict[str, Any]:
        raise NotImplementedError

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = self.run(**options)
        except PortalError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(json.dumps(result, indent=2))
