"""Write use cases, named `<entity>_<action>`, keyword-only; they own validation.

- `fields`: the rules for settings tenant admins type (URLs, paths, channels, time zones).
- `accounts`: tenants, users, API keys, who is calling (`Principal`).
- `partners`: partners and their signing secrets.
- `events`: accepting an event (`event_accept`): atomic, Idempotency-Key included.
- `ingest_sql`: the ingest write path's hand-written statements.
- `idempotency`: Idempotency-Key records.
- `operations`: redeliver, recover, cancel, resume, disable, test event; retention.
- `alerts`: e-mails to a tenant's admins (run by their own tasks).

Deliveries themselves are the outbox's (`integrations.outbox`).
"""
