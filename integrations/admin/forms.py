"""What the admin's forms share: service rules shown beside each field, secrets shown once."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from integrations.errors import PortalError


def show_once(request, label: str, value: str) -> None:
    """Show a secret in the next page's messages: the only time it is ever shown."""
    messages.warning(
        request,
        format_html(
            _("{} (copy it now, it is shown only once): <code class='secret-once'>{}</code>"),
            label,
            value,
        ),
    )


def copy_saved(obj, saved) -> None:
    """Make the admin's unsaved `obj` the row a service created (the admin logs it and
    redirects to it)."""
    for field in type(saved)._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding, obj._state.db = False, saved._state.db


class ServiceCleanedForm(forms.ModelForm):
    """A model form whose rules are a service's: `service_clean(**values)` checks the
    fields it names and raises PortalError keyed by field, shown beside each field."""

    service_fields: tuple[str, ...] = ()

    def service_clean(self, **values):
        raise NotImplementedError

    def clean(self):
        data = super().clean()
        values = {
            name: data[name] for name in self.service_fields if name in data and name in self.fields
        }
        try:
            data.update(self.service_clean(**values))
        except PortalError as exc:
            for name, problems in exc.errors.items():
                field = name if name in self.fields else None
                for problem in problems:
                    if field is None or field not in self.errors:
                        self.add_error(field, problem)
        return data


def service_values(form, names) -> dict:
    return {name: form.cleaned_data[name] for name in names if name in form.cleaned_data}


def fieldsets_swapped(fieldsets, swaps: dict[str, str | None]) -> list:
    """`fieldsets` with each field named in `swaps` replaced by its value (an admin method
    that shows it safely), or left out when that is None: for users who may only look."""
    return [
        (name, {**opts, "fields": [swaps.get(f, f) for f in opts["fields"] if swaps.get(f, f)]})
        for name, opts in fieldsets
    ]


CONFIRMED = "confirmed"


def confirm_first(modeladmin, request, queryset, *, question: str, consequence: str):
    """For an action that cannot be undone: None once the user confirmed it, else the page
    that asks (the selected rows listed, Yes re-posts the action, No goes back)."""
    if request.POST.get(CONFIRMED) == "yes":
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": question,
        "question": question,
        "consequence": consequence,
        "objects": list(queryset),
        "action": request.POST.get("action", ""),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "opts": modeladmin.model._meta,
        "confirmed": CONFIRMED,
    }
    return TemplateResponse(request, "admin/integrations/confirm_action.html", context)
