"""Tenant scoping for the admin: who sees and may change what (issue 6).

Superusers see everything. Everyone else sees only the tenants they are a member of, with
the role's rights per model; another tenant's objects are absent from lists, filters,
autocomplete and raw-id popups (all built on `get_queryset`) and their URLs answer 404.
"""

from __future__ import annotations

import re
from functools import wraps

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.http import Http404
from django.utils.functional import cached_property

from integrations.models import Partner, Tenant, TenantMembership, Ticket

ADMIN = TenantMembership.Role.ADMIN
SUPPORT = TenantMembership.Role.SUPPORT


def tenant_roles(request) -> dict[int, str]:
    """{tenant id: role} of the signed-in user, memoized on the request."""
    if not hasattr(request, "_portal_roles"):
        user = request.user
        request._portal_roles = (
            dict(TenantMembership.objects.filter(user=user).values_list("tenant_id", "role"))
            if user.is_authenticated and user.is_active
            else {}
        )
    return request._portal_roles


def tenant_ids_for(request, *, role: str | None = None) -> list[int] | None:
    """Tenant ids the user may act in (with `role` when given); None means all (superuser)."""
    if request.user.is_superuser:
        return None
    return [t for t, r in tenant_roles(request).items() if role is None or r == role]


class TenantScopedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose rows belong to a tenant through `tenant_path`.

    `role_permissions` says which of view/add/change/delete each role has on this model.
    """

    tenant_path = "tenant"
    role_permissions: dict[str, set[str]] = {ADMIN: {"view"}, SUPPORT: {"view"}}

    # --- what is visible ---------------------------------------------------------------
    def get_queryset(self, request):
        qs = super().get_queryset(request)
        ids = tenant_ids_for(request)
        if ids is None:
            return qs
        lookup = f"{self.tenant_path}__in" if self.tenant_path else "pk__in"
        return qs.filter(**{lookup: ids})

    def obj_tenant_id(self, obj) -> int | None:
        if not self.tenant_path:
            return obj.pk
        value = obj
        for part in self.tenant_path.split("__"):
            value = getattr(value, part, None)
            if value is None:
                return None
        return value.pk if hasattr(value, "pk") else value

    # --- actions: only on rows of tenants where the user's role allows them ---------------
    def get_actions(self, request):
        """Each action runs on the selected rows of the tenants where the user's role has the
        action's permissions: Django checks them without an object (true when the user has
        them in any tenant), so a user who is admin in one tenant and support in another
        must not act as admin on the second's rows."""
        actions = super().get_actions(request)
        return {
            name: (self._narrowed(func), name, description)
            for name, (func, _, description) in actions.items()
        }

    def _narrowed(self, func):
        permissions = getattr(func, "allowed_permissions", ())

        @wraps(func)
        def run(modeladmin, request, queryset):
            for permission in permissions:
                queryset = modeladmin.rows_allowed(request, queryset, permission)
            return func(modeladmin, request, queryset)

        return run

    # An action's own permission names and the role permission each stands for.
    action_permissions: dict[str, str] = {}

    def rows_allowed(self, request, queryset, permission: str):
        """`queryset` narrowed to the tenants where the user's role has `permission`."""
        if request.user.is_superuser:
            return queryset
        permission = self.action_permissions.get(permission, permission)
        tenants = [
            tenant_id
            for tenant_id, role in tenant_roles(request).items()
            if permission in self.role_permissions.get(role, set())
        ]
        lookup = f"{self.tenant_path}__in" if self.tenant_path else "pk__in"
        return queryset.filter(**{lookup: tenants})

    # --- what is allowed ----------------------------------------------------------------
    def _allowed(self, request, action: str, obj=None) -> bool:
        if request.user.is_superuser:
            return True
        roles = tenant_roles(request)
        if obj is not None:
            role = roles.get(self.obj_tenant_id(obj))
            return role is not None and action in self.role_permissions.get(role, set())
        return any(action in self.role_permissions.get(r, set()) for r in roles.values())

    def has_module_permission(self, request) -> bool:
        return (
            request.user.is_active
            and request.user.is_staff
            and (request.user.is_superuser or bool(tenant_roles(request)))
        )

    def has_view_permission(self, request, obj=None) -> bool:
        return self._allowed(request, "view", obj) or self._allowed(request, "change", obj)

    def has_add_permission(self, request) -> bool:
        return self._allowed(request, "add")

    def has_change_permission(self, request, obj=None) -> bool:
        return self._allowed(request, "change", obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        return self._allowed(request, "delete", obj)

    def get_object(self, request, object_id, from_field=None):
        """The object if it is in this user's tenants; else 404 (also before any
        permission check, so another tenant's URLs look exactly like missing ones)."""
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404
        return obj

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        # Another tenant's object (or a missing one): a plain 404, no hint it exists.
        raise Http404

    # --- choices in forms never offer another tenant's objects --------------------------
    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        model = db_field.related_model
        ids = tenant_ids_for(request, role=ADMIN)
        if ids is not None:
            if model is Tenant:
                kwargs["queryset"] = Tenant.objects.filter(pk__in=ids)
            elif model in (Partner, Ticket):
                kwargs["queryset"] = model.objects.filter(tenant_id__in=ids)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        ids = tenant_ids_for(request, role=ADMIN)
        if ids is not None and db_field.related_model is Tenant:
            kwargs["queryset"] = Tenant.objects.filter(pk__in=ids)
        return super().formfield_for_manytomany(db_field, request, **kwargs)


_PLANNED_ROWS = re.compile(r"rows=(\d+)")


class EstimatedCountPaginator(Paginator):
    """Never runs an exact COUNT(*) over a big table: counts at most CAP rows, and for an
    unfiltered PostgreSQL table uses the planner's estimate. Deep pages are fetched with a
    deferred join (see `page`)."""

    CAP = 10_000
    # From this offset on a page is fetched as primary keys first (page 21 of 50 rows).
    DEFERRED_FROM = 1_000

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if connection.vendor == "postgresql" and not qs.query.where:
            # The planner's estimate of the whole table (EXPLAIN, no rows read).
            match = _PLANNED_ROWS.search(qs.order_by().explain())
            if match and int(match.group(1)) > self.CAP:
                return int(match.group(1))
        # Without ORDER BY: it cannot change a capped count, but it would make PostgreSQL walk
        # the ordering's index and filter (status=dead: 450,000 deliveries read to count
        # 10,001) instead of using the filter's own index.
        return qs.order_by()[: self.CAP + 1].count()

    @property
    def capped(self) -> bool:
        """True when the count stopped at the cap: the real number of rows is unknown."""
        return self.count == self.CAP + 1

    def _reach(self, number) -> None:
        """A page past a capped count is served when it has rows: look at most one page and
        one row ahead there, and count that far (so the next page's link is right too)."""
        try:
            number = int(number)
        except (TypeError, ValueError):
            return  # validate_number says what is wrong
        bottom = (number - 1) * self.per_page
        # From the last page of the capped count on (it would be cut short at the cap).
        if not self.capped or number < self.num_pages or bottom < 0:
            return
        ahead = list(
            self.object_list.values_list("pk", flat=True)[bottom : bottom + self.per_page + 1]
        )
        self._ahead = (bottom, ahead)  # page() takes its keys from here
        found = len(ahead)
        if found:
            self.__dict__["count"] = bottom + found
            self.__dict__.pop("num_pages", None)

    def page(self, number):
        """The page, by a deferred join once it is deep: OFFSET n with the list's
        select_related joins joins all n skipped rows too (300 ms for page 2,000 of
        1,000,000 events); the page's primary keys alone come from one table, then only
        those rows are fetched with their joins, in the same order. Past a capped count
        (a tenant's list of more than CAP rows) a page is served while there are rows."""
        self._reach(number)
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        qs = self.object_list
        if bottom < self.DEFERRED_FROM or not hasattr(qs, "values_list") or qs.query.distinct:
            return self._get_page(qs[bottom:top], number, self)
        known = getattr(self, "_ahead", None)
        if known is not None and known[0] == bottom:
            pks = known[1][: top - bottom]
        else:
            pks = list(qs.values_list("pk", flat=True)[bottom:top])
        return self._get_page(qs.filter(pk__in=pks), number, self)


class ReadOnlyScopedInline(admin.TabularInline):
    """A read-only inline on a tenant-scoped page: whoever may see the parent (already
    checked by its TenantScopedAdmin) sees these rows; nobody edits them here."""

    extra = 0
    can_delete = False

    def has_view_permission(self, request, obj=None) -> bool:
        return True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
