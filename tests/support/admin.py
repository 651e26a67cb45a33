"""Signed-in admin clients for tests: a staff user with a role in a tenant."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.test import Client

from integrations.models import TenantMembership


def staff_client(tenant, role: str, name: str) -> Client:
    """A test client signed in as a new staff user `name` with `role` in `tenant`."""
    user = get_user_model().objects.create_user(name, is_staff=True)
    TenantMembership.objects.create(user=user, tenant=tenant, role=role)
    client = Client()
    client.force_login(user)
    return client
