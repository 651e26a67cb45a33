"""The tenant's admin and support staff, signed in (tests/support/admin.py)."""

import pytest

from tests.support.admin import staff_client


@pytest.fixture
def admin_client_(tenant):
    return staff_client(tenant, "admin", "ayu")


@pytest.fixture
def support_client(tenant):
    return staff_client(tenant, "support", "sari")
