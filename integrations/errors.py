"""Domain errors that carry their SPEC §3.4 status and machine code.

Services raise these; the API's exception handler turns every one of them (and DRF's own
errors) into the one error envelope.
"""

from __future__ import annotations


class PortalError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, errors: dict[str, list[str]] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.errors = errors or {}

    def with_status(self, status_code: int) -> PortalError:
        """Set an HTTP status for an error that has no class of its own (413, 415)."""
        self.status_code = status_code
        return self


class Unauthorized(PortalError):
    status_code = 401
    code = "not_authenticated"


class Forbidden(PortalError):
    status_code = 403
    code = "forbidden"


class NotFound(PortalError):
    status_code = 404
    code = "not_found"


class Conflict(PortalError):
    status_code = 409
    code = "conflict"
