"""Write use cases, named `<entity>_<action>`, keyword-only.

Split by what they write: tenants, partners and keys (`accounts`), accepted events
(`events`), deliveries and their attempts (`deliveries`), idempotency records
(`idempotency`).
"""
