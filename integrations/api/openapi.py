"""drf-spectacular extension: document the bearer-key authentication."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "integrations.api.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A partner key (prt_…) or an engine key (eng_…).",
        }


class ManagementTokenScheme(OpenApiAuthenticationExtension):
    target_class = "integrations.api.auth.ManagementTokenAuthentication"
    name = "managementToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A management token (mgt_…) of one tenant, role admin or support.",
        }
