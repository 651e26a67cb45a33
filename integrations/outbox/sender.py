"""Sending a batch: claim, send one request after the other, record (SPEC §5).

A task hands the sender a batch of delivery ids. The sender claims those that may go now
(and, from a task, tops the batch up with the partner's oldest new deliveries), sends them
over the process's pooled connection and records what happened. Batches make a backlog cheap
to drain: the claim, the attempt rows, the status updates and the partner's counters cost a
few statements per batch instead of per delivery (bench/delivery.py).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no stub: signal.signal without the enums)
import contextlib
import functools
import os
import random
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from opentelemetry import context as otel_context

from integrations import logs, tracing
from integrations.delivery import DeliveryResult, send_webhook
from integrations.models import Delivery
from integrations.outbox.queue import (
    batch_key,
    batch_outranked,
    bells,
    deliveries_claim,
    deliveries_claim_due,
    deliveries_claim_more,
    deliveries_hand_back,
    deliveries_release,
    deliveries_release_target,
    pump_bell_wait,
    pump_flag_drop,
    pump_flag_take,
    pump_recruit,
    pump_requeue,
    tasks_waiting,
)
from integrations.outbox.record import (
    Finished,
    SendResult,
    batch_record,
    storable,
    unanswered,
)
from integrations.outbox.sendable import PartnerRow, Sendable
from integrations.outbox.targets import (
    Target,
    delivery_client,
    delivery_target,
    outbound_policy,
    retry_schedule,
)
from integrations.payloads import canonical_json
from integrations.webhooks import Outcome

# Seconds a batch's requests are recorded together; past that, each one as soon as it is
# answered, so a slow partner's next message of a ticket is not held up by the batch.
RECORD_EVERY = 0.25
# Seconds a target's first request of a batch is waited on alone before more go alongside it.
PROBE = 0.25
# Seconds after which a batch starts no new request: the rest goes back to the queue.
SLICE = 5.0
# Seconds between looks for new work while every request of a batch is in flight.
POLL = 0.1
# Longest single wait of a lingering pump on its bell: between two, it looks whether a queue
# message waits for a worker slot (then it stops lingering and gives the slot back).
LINGER_STEP = 0.1
MAX_RETRY_AFTER = 10 * 3600
JITTER = 0.2

_pool: ThreadPoolExecutor | None = None
_pool_key = (0, 0)  # (pid, size) the pool was made for
_pool_lock = threading.Lock()


def _sending_pool() -> ThreadPoolExecutor:
    """The process's sending threads, PORTAL_DELIVERY_PARALLEL of them (made again in a
    forked child: threads do not survive a fork)."""
    global _pool, _pool_key
    key = (os.getpid(), settings.PORTAL_DELIVERY_PARALLEL)
    with _pool_lock:
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=key[1], thread_name_prefix="portal-send")
            _pool_key = key
        return _pool


def _reset_after_fork() -> None:
    global _pool_lock
    _pool_lock = threading.Lock()  # a thread may have held it at fork time


os.register_at_fork(after_in_child=_reset_after_fork)


def next_delay(result: DeliveryResult, tries: int, schedule: Sequence[int]) -> float | None:
    """Seconds until the next try after `tries` tries of the current schedule, or None when
    the schedule is used up. ±JITTER around the scheduled delay; a longer Retry-After wins,
    capped at MAX_RETRY_AFTER."""
    if tries >= len(schedule):
        return None
    delay = schedule[tries] * random.uniform(1 - JITTER, 1 + JITTER)
    if result.retry_after is not None and result.retry_after > delay:
        delay = min(result.retry_after, MAX_RETRY_AFTER)
    return delay


def delivery_send(
    delivery: Sendable,
    target: Target,
    schedule: Sequence[int],
    within: otel_context.Context | None = None,
) -> Finished:
    """Send one claimed delivery and decide its new status (nothing is written here); its
    log lines carry the event's ids and request id, its span joins the event's trace (the
    task's span in `within`, when it is the same trace: the sending thread has no context
    of its own)."""
    with (
        logs.bound(**attempt_ids(delivery)),
        tracing.attempt_span(
            "delivery attempt",
            stored=delivery.trace_context,
            within=within,
            attributes={
                "portal.delivery_id": str(delivery.pk),
                "portal.event_id": str(delivery.event_id),
                **tracing.url_attributes(target.url),
            },
        ) as span,
    ):
        finished = _delivery_send(delivery, target, schedule)
        if span.is_recording() and finished.result is not None:
            span.set_attribute("portal.outcome", str(finished.result.outcome))
            if finished.result.status_code is not None:
                span.set_attribute("http.response.status_code", finished.result.status_code)
        return finished


def attempt_ids(delivery: Sendable) -> dict[str, object]:
    """The ids a log line about this delivery carries (SPEC §10)."""
    return {
        "request_id": delivery.request_id,
        "tenant": delivery.tenant.owner,
        "event_id": delivery.event_id,
        "delivery_id": delivery.pk,
        "partner_id": delivery.partner_id,
    }


def _delivery_send(delivery: Sendable, target: Target, schedule: Sequence[int]) -> Finished:
    try:
        result = send_webhook(
            url=target.url,
            body=canonical_json(delivery.payload),
            msg_id=str(delivery.event_id),
            secrets=list(target.secrets),
            policy=outbound_policy(),
            bearer_token=target.bearer_token,
            connect_timeout=target.connect_timeout,
            deadline=target.deadline,
            client=delivery_client(),
        )
    except ValueError as exc:
        # A configuration problem (no usable signing secret, say): retrying cannot fix it,
        # so the delivery is dead with the reason recorded, not left leased.
        result = unanswered("configuration_error", str(exc))
    result = storable(result)
    if result.outcome == Outcome.SUCCESS:
        return Finished(delivery, Delivery.Status.SUCCEEDED, "", result=result, url=target.url)
    error = result.error_message or f"HTTP {result.status_code}"
    tries = delivery.attempts - delivery.retry_base
    delay = next_delay(result, tries, schedule) if result.outcome == Outcome.RETRY else None
    if delay is None:
        return Finished(delivery, Delivery.Status.DEAD, error, result=result, url=target.url)
    next_at = timezone.now() + timedelta(seconds=delay)
    return Finished(
        delivery, Delivery.Status.RETRYING, error, next_at=next_at, result=result, url=target.url
    )


class Batch:
    """Claimed deliveries on their way out: `launch_next` sends (or sets aside) the next one,
    `record` writes what was sent, `hand_back_rest` gives back what was not tried.

    Up to PORTAL_DELIVERY_PARALLEL requests are in flight at once (on the process's sending
    threads), so one slow ticket does not hold up the batch's others. A target goes one
    request at a time until it has answered once in this batch or kept its first request
    waiting for PROBE seconds; a failing target (a partner with failures in a row, or a
    delivery on its retries) goes one request at a time throughout. After a target's first
    failure its other deliveries are handed back untried, and so is whatever is not started
    within SLICE seconds (the worker slot goes back to the queue, where other partners'
    batches wait their turn) or would not finish within half the lease (counted from
    `started`, before the claim).

    With `top_up` (a function taking the room left and returning newly claimed deliveries),
    a batch waiting on an answer slower than PROBE, with nothing else to start, looks for its
    partner's new deliveries every POLL seconds while it is within its slice, so a partner's
    other tickets do not wait for a slow one's answer.
    """

    def __init__(
        self,
        token: uuid.UUID,
        deliveries: Sequence[Sendable],
        started: float,
        top_up: Callable[[int], list[Sendable]] | None = None,
    ) -> None:
        self.token = token
        self.started = started
        self.budget = settings.PORTAL_DELIVERY_LEASE_SECONDS / 2
        self.parallel = settings.PORTAL_DELIVERY_PARALLEL
        self.top_up = top_up
        self.waiting: deque[Sendable] = deque(deliveries)
        self.in_flight: dict[Future[Finished], tuple[Sendable, str, float]] = {}
        self.finished: list[Finished] = []  # not recorded yet
        self.set_aside: list[Sendable] = []  # to hand back
        self.failing: set[str] = set()  # batch keys whose target failed in this batch
        self.answered: set[str] = set()  # batch keys whose target answered in this batch
        self.careful: set[str] = set()  # batch keys sent one request at a time
        self.targets: dict[tuple[str, int, str], Target] = {}
        self.launched = 0
        self.polled = started
        self.results: dict[int, SendResult] = {}

    def _target(self, delivery: Sendable, now: datetime) -> Target:
        key = (delivery.target, delivery.tenant_id, delivery.endpoint)
        if key not in self.targets:
            self.targets[key] = delivery_target(delivery, now)
        return self.targets[key]

    def _room(self, key: str) -> bool:
        """Whether another request to the target `key` may start now."""
        mine = [started for _, k, started in self.in_flight.values() if k == key]
        if not mine:
            return len(self.in_flight) < self.parallel
        if key in self.careful or self.parallel == 1 or len(self.in_flight) >= self.parallel:
            return False
        # slow start: more at once only once the target answered, or is slow to answer
        return key in self.answered or time.monotonic() - min(mine) >= PROBE

    def launch_next(self) -> bool:
        """Start the next delivery if there is room for it: finish it without a request when
        there is nothing to send, set it aside when it may not go now, else send it. Returns
        False when the next one must wait for a request in flight to finish."""
        delivery = self.waiting[0]
        key = batch_key(delivery.target, delivery.tenant_id)
        if not self._room(key):
            return False
        self.waiting.popleft()
        schedule = retry_schedule(delivery.partner.retry_schedule if delivery.partner else "")
        if delivery.attempts - delivery.retry_base > len(schedule):
            # The previous holder died after taking the last try; nothing is sent again.
            error = "Attempts used up (a worker was lost during the last one)."
            self.finished.append(Finished(delivery, Delivery.Status.DEAD, error))
            return True
        target = self._target(delivery, timezone.now())
        if not target.url:
            error = (
                "No operations URL is configured."
                if delivery.target == Delivery.OPERATIONS_TARGET
                else "No engine relay is configured."
            )
            self.finished.append(Finished(delivery, Delivery.Status.NOT_CONFIGURED, error))
            return True
        elapsed = time.monotonic() - self.started
        if key in self.failing or (
            self.launched and (elapsed > SLICE or elapsed + target.deadline > self.budget)
        ):
            self.set_aside.append(delivery)
            return True
        if delivery.attempts - delivery.retry_base > 1 or (
            delivery.partner is not None and delivery.partner.consecutive_failures > 0
        ):
            self.careful.add(key)
        self.launched += 1
        if self.parallel == 1:
            self._finish(delivery, key, delivery_send(delivery, target, schedule))
        else:
            future = _sending_pool().submit(
                delivery_send, delivery, target, schedule, tracing.current()
            )
            self.in_flight[future] = (delivery, key, time.monotonic())
        return True

    def _finish(self, delivery: Sendable, key: str, finished: Finished) -> None:
        self.finished.append(finished)
        self.answered.add(key)
        if finished.status != Delivery.Status.SUCCEEDED:
            self.failing.add(key)

    def wait(self, timeout: float | None) -> None:
        """Collect the requests that finish within `timeout` seconds (None: the first one)."""
        done, _ = futures_wait(self.in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            delivery, key, _ = self.in_flight.pop(future)
            self._finish(delivery, key, future.result())

    def _poll(self) -> None:
        """Top the batch up while it waits on a slow answer (see the class)."""
        now = time.monotonic()
        room = self.parallel - len(self.in_flight)
        if (
            self.top_up is None
            or self.waiting
            or room <= 0
            or self.failing
            or now - self.started > SLICE
            or now - self.polled < POLL
            # only while a request has been waiting PROBE seconds: a quick batch ends as it is
            or not self.in_flight
            or now - min(started for _, _, started in self.in_flight.values()) < PROBE
        ):
            return
        self.polled = now
        self.waiting.extend(self.top_up(room))

    @property
    def slow(self) -> bool:
        return time.monotonic() - self.started > RECORD_EVERY

    def record(self) -> None:
        """Write what was sent since the last call (record.batch_record: one statement, or
        one transaction)."""
        if self.finished:
            finished, self.finished = self.finished, []
            self.results.update(batch_record(token=self.token, finished=finished))

    def hand_back_rest(self) -> None:
        """Give back what was set aside and what was never reached."""
        rest = self.set_aside + list(self.waiting)
        self.set_aside, self.waiting = [], deque()
        deliveries_hand_back(delivery_ids=[d.pk for d in rest], token=self.token)
        self.results.update(dict.fromkeys((d.pk for d in rest), SendResult.HANDED_BACK))

    def run(self) -> dict[int, SendResult]:
        """Send everything; a quick batch is recorded once, a slow one as its requests are
        answered. If anything raises, the requests in flight are let finish, what was sent
        is recorded and the rest handed back before the error goes on (a delivery whose
        sending raised keeps its lease: if it breaks every worker, its tries run out)."""
        try:
            while self.waiting or self.in_flight:
                while self.waiting and self.launch_next():
                    if self.slow:
                        self.record()
                if self.in_flight:
                    self.wait(POLL if self.top_up is not None or self.waiting else None)
                    self._poll()
                if self.slow:
                    self.record()
        finally:
            try:
                self._drain()
            finally:
                try:
                    self.record()
                finally:
                    self.hand_back_rest()
        return self.results

    def _drain(self) -> None:
        """Let the requests in flight finish (each ends by its deadline) and keep what they
        got; the first error among them is raised once all are in."""
        error: BaseException | None = None
        for future, (delivery, key, _) in list(self.in_flight.items()):
            try:
                self._finish(delivery, key, future.result())
            except BaseException as exc:  # noqa: BLE001 - raised below, after the others
                error = error or exc
        self.in_flight.clear()
        if error is not None:
            raise error


def deliveries_send(*, delivery_ids: Sequence[int], top_up: bool = False) -> dict[int, SendResult]:
    """Claim these deliveries and make one attempt of each; returns each id's SendResult.

    Side effects: one DeliveryAttempt row per request sent, the deliveries' new status, the
    partners' health; when a delivery became final, the next one of its (target, ticket) is
    queued. With `top_up` (the queue's tasks), a batch of one partner smaller than
    PORTAL_DELIVERY_BATCH is filled up with that partner's oldest new deliveries, and
    topped up again while its requests are in flight (see `Batch`); those appear in the
    result too.
    """
    ids = list(dict.fromkeys(int(pk) for pk in delivery_ids))
    results = dict.fromkeys(ids, SendResult.NOT_CLAIMED)
    token, now, started = uuid.uuid4(), timezone.now(), time.monotonic()
    claimed = deliveries_claim(delivery_ids=ids, token=token, now=now)
    if len(claimed) < len(ids):
        deliveries_release(delivery_ids=sorted(set(ids) - {d.pk for d in claimed}))
    if not claimed:
        return results
    return _send_claimed(claimed, token, now, started, results, top_up=top_up)


def _send_claimed(
    claimed: list[Sendable],
    token: uuid.UUID,
    now: datetime,
    started: float,
    results: dict[int, SendResult],
    *,
    top_up: bool,
    fill: bool = True,
    recruit: Callable[[], object] | None = None,
) -> dict[int, SendResult]:
    """Send what a claim under `token` took (see `deliveries_send`): top up (`fill`: at
    once to PORTAL_DELIVERY_BATCH; and while waiting on a slow answer), check the fair
    share, `recruit` another pump when the target is one with no fair share to keep (see
    `_unlimited`), run the batch. Returns `results` with these deliveries' results added."""
    deliveries = list(claimed)
    results.update(dict.fromkeys((d.pk for d in deliveries), SendResult.NOT_CLAIMED))
    partners = {d.partner_id for d in deliveries}
    more: Callable[[int], list[Sendable]] | None = None
    if top_up and len(partners) == 1 and None not in partners:
        partner_id = partners.pop()
        assert partner_id is not None

        def more(limit: int) -> list[Sendable]:
            taken = deliveries_claim_more(
                partner_id=partner_id, limit=limit, token=token, now=timezone.now()
            )
            results.update(dict.fromkeys((d.pk for d in taken), SendResult.NOT_CLAIMED))
            return taken

        room = settings.PORTAL_DELIVERY_BATCH - len(deliveries)
        if fill and room > 0:
            deliveries += deliveries_claim_more(
                partner_id=partner_id, limit=room, token=token, now=now
            )
            results.update(dict.fromkeys((d.pk for d in deliveries), SendResult.NOT_CLAIMED))
            deliveries.sort(key=lambda d: d.pk)  # oldest first, whichever claim took it
    if _surplus(deliveries, token, now):
        taken = [d.pk for d in deliveries]
        deliveries_hand_back(delivery_ids=taken, token=token)
        results.update(dict.fromkeys(taken, SendResult.HANDED_BACK))
        return results
    if recruit is not None and _unlimited(deliveries):
        recruit()
    results.update(Batch(token, deliveries, started, top_up=more).run())
    return results


def _unlimited(deliveries: Sequence[Sendable]) -> bool:
    """Whether these deliveries' target may have batches in flight side by side: the engine
    relay, or a partner known to be fast. A slow or unproven partner gets one batch at a
    time (its fair share, `_surplus`): a second pump's batch would be handed back, and while
    it was in flight the first pump's next claim would find nothing it may take, so both
    would end and leave the backlog to the dispatcher."""
    partners = _partners(deliveries)
    if partners == {None: None}:
        return True
    return len(partners) == 1 and _known_fast(next(iter(partners.values())))


def _partners(deliveries: Sequence[Sendable]) -> dict[int | None, PartnerRow | None]:
    """These deliveries' partners by id (None: the engine relay or operations URL), each as
    its first delivery read it (rows of later top-ups may have read newer counters)."""
    partners: dict[int | None, PartnerRow | None] = {}
    for d in deliveries:
        partners.setdefault(d.partner_id, d.partner)
    return partners


def _known_fast(partner: PartnerRow | None) -> bool:
    """A partner whose answers average under PORTAL_SLOW_PARTNER_MS: no fair share to keep."""
    average = partner.latency_ms_avg if partner is not None else None
    return average is not None and average < settings.PORTAL_SLOW_PARTNER_MS


def deliveries_pump(*, key: str, slot: int = 0) -> dict[int, SendResult]:
    """What a pump task does (queue.wake): send the target `key`'s due deliveries, a batch
    of up to PORTAL_DELIVERY_BATCH after the other, until none may go now; returns each
    id's SendResult.

    With nothing left, the pump in slot 0 lingers up to PORTAL_PUMP_LINGER_MS on the
    target's bell (`_lingered`): an event accepted meanwhile finds the flag up and rings it,
    and the pump claims again, so a steady trickle of events costs one task, not one each.
    Then the pump's flag is lowered and the database looked at once more, so an event
    committed while the flag was still up (its wake queued nothing) is not left behind; and
    the target's new deliveries it could not take (a failing partner's attempt in flight, a
    slow partner's fair share, a window of held-up messages of one ticket) are marked not
    queued, so the dispatcher queues each as soon as it may go. A full batch means a
    backlog: the pump recruits another (queue.pump_recruit, up to PORTAL_PUMPS_PER_TARGET at
    once) when the target may have batches side by side (`_unlimited`). After SLICE seconds
    the pump queues itself again, flag up, and ends: the worker slot goes back to the queue,
    where other targets' tasks wait their turn. A batch beyond a slow partner's fair share,
    or cut short by a failure, is handed back and the pump ends, marking the rest not
    queued as above (the batch running already, and then the dispatcher, take it).
    """
    try:
        return _pump(key, slot)
    except BaseException:
        # the rows are safe (recorded or handed back, or their lease runs out); the flag
        # must not keep the next events from queueing a pump until it expires
        pump_flag_drop(key, slot)
        raise


def _pump(key: str, slot: int) -> dict[int, SendResult]:
    results: dict[int, SendResult] = {}
    limit = settings.PORTAL_DELIVERY_BATCH
    started, lowered = time.monotonic(), False
    waited = False  # a linger ran out since the last claim that took something
    while True:
        token, now, begun = uuid.uuid4(), timezone.now(), time.monotonic()
        if _stopping:
            # a SIGTERM came while this process lingered: no more claims; the target's new
            # rows go to the dispatcher (another worker)
            if not lowered:
                pump_flag_drop(key, slot)
            deliveries_release_target(key=key, now=now)
            return results
        claimed, looked = deliveries_claim_due(key=key, limit=limit, token=token, now=now)
        if not claimed:
            if lowered:
                deliveries_release_target(key=key, now=now)
                return results
            if slot == 0 and not waited and _lingered(key, started):
                continue
            pump_flag_drop(key, slot)
            lowered = True
            continue
        waited = False
        if lowered:
            if not pump_flag_take(key, slot):
                # a newer pump is queued in this slot: this batch is the last of this one
                _send_claimed(claimed, token, now, begun, results, top_up=True, fill=False)
                return results
            lowered = False
        # a full batch: a backlog, which another pump may help with
        helper = functools.partial(pump_recruit, key) if len(claimed) >= limit else None
        sent = _send_claimed(
            claimed, token, now, begun, results, top_up=True, fill=False, recruit=helper
        )
        if any(sent[d.pk] == SendResult.HANDED_BACK for d in claimed):
            pump_flag_drop(key, slot)
            deliveries_release_target(key=key, now=timezone.now())
            return results
        if time.monotonic() - started > SLICE:
            pump_requeue(key, slot, refresh=True)
            return results
        if slot == 0 and looked is not None and looked < limit:
            # The claim saw every new due delivery of the target and took what it could:
            # what comes after it rings the bell (a new event's wake; the next message of a
            # ticket this batch finished), so the pump waits for that instead of claiming
            # again for nothing (a claim that finds nothing costs about what one that finds
            # a row does). A full window may hide takeable rows behind held ones: claim.
            if _lingered(key, started):
                continue
            waited = True  # it ran out: look once more, then end


def _lingered(key: str, started: float) -> bool:
    """Wait on the target's bell for up to PORTAL_PUMP_LINGER_MS (within the pump's SLICE),
    in steps of LINGER_STEP, while no queue message waits for a worker slot; True when it
    rang (an event for the target was accepted: claim again), False when the pump should
    end. A lingering pump holds a worker slot, so it gives the slot back as soon as another
    task waits for one (`queue.tasks_waiting`): other targets' pumps, the dispatcher."""
    linger = settings.PORTAL_PUMP_LINGER_MS / 1000
    if linger <= 0 or _stopping or not bells():
        return False
    until = min(time.monotonic() + linger, started + SLICE)
    with _stopped_by_sigterm():
        while (left := until - time.monotonic()) > 0 and not _stopping:
            rang = pump_bell_wait(key, min(LINGER_STEP, left))
            if rang is None:  # no bell to wait on after all (the cache failed)
                return False
            if rang:
                return True
            if tasks_waiting():  # a step went by idle: is the slot wanted?
                return False
    return False


# Set for good in a process that got a SIGTERM while a pump lingered (`_stopped_by_sigterm`).
_stopping = False


def _stop(signum: int, frame: object) -> None:
    global _stopping
    _stopping = True


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """While a pump lingers, SIGTERM ends the wait instead of the process: a stop that
    signals the worker's whole process group (a deploy, `make run`, the tests) reaches the
    pool process in the middle of a task only because it was waiting for work. It marks the
    process as stopping (`_stopping`: no pump of it lingers or claims again; the one that
    lingered ends within LINGER_STEP, its target's rows left to the dispatcher), and the
    worker's warm shutdown then stops it as any idle pool process; a second SIGTERM, outside
    a linger, ends it as before. Only in the main thread (where Python runs signal
    handlers); elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # _signal.signal is what signal.signal calls; the latter then turns the handler it
    # replaced into an enum member, by way of a ValueError for a function such as Celery's,
    # twice a linger: 3 % of a pool process's CPU per event in the latency bench.
    previous = _signal.signal(signal.SIGTERM.value, _stop)
    try:
        yield
    finally:
        if previous is not None:  # (None: a handler not set from Python, left as it is)
            _signal.signal(signal.SIGTERM.value, previous)


def _surplus(deliveries: Sequence[Sendable], token: uuid.UUID, now: datetime) -> bool:
    """Whether this batch is beyond its partner's fair share (`queue.batch_outranked`):
    asked only of a batch of one slow or unproven partner (a fast partner has no limit)."""
    partners = _partners(deliveries)
    if len(partners) != 1:
        return False
    partner = next(iter(partners.values()))
    if partner is None or _known_fast(partner):
        return False
    return batch_outranked(
        partner_id=partner.pk,
        known_slow=partner.latency_ms_avg is not None,
        token=token,
        now=now,
    )
