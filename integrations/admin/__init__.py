"""The admin: tenant-scoped configuration (accounts) and logs. The site itself, whose index
is the dashboard, is portal.admin_site (outside this package, so that building the lazy
default site never re-enters these registrations)."""

from integrations.admin import accounts, events, logs, partners  # noqa: F401 - registers them
