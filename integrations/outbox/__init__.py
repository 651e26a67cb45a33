"""The outbox: every delivery of an accepted event, from its row to its attempt records.

The database is the source of truth (SPEC §5); Celery only wakes work up. One owner per
concern, each importing only those listed before it:

- `targets`: where and how a delivery goes (URL, live signing secrets, bearer token, timeouts,
  retry schedule, SSRF policy): the one place that reads partner and relay settings.
- `queue`: which deliveries may go now (the claim, per-ticket order, the dispatcher's query)
  and the one place that sends queue messages. Its statements are hand-written SQL.
- `health`: a partner's health counters and its automatic pause.
- `record`: one transaction that writes a batch's attempts and outcomes; hand-back.
- `sender`: claims a batch, sends it one request after the other, records it.

An incoming event: api view → payloads → services.events (rows, in one transaction) →
queue.wake (on commit) → tasks.delivery_pump → sender (claims the target's due rows) →
delivery.send_webhook → record (attempt rows, outcomes, the next delivery of each ticket
queued by id: tasks.delivery_send_batch, as the dispatcher's are).
"""
