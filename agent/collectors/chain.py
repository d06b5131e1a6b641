"""Collector chains: several ways of reading one device, merged into one Reading.

A profile lists its collectors in order (`collectors:` in firmware_profiles/*.yaml), e.g. a
MAXHUB panel: `maxhub-lan`, then `pjlink` where the site enables it, then `reachability`.
Each runs under its own deadline, all at once (they speak to different ports); the reading
takes each field from the first collector in the chain that gave it, is reachable when any
collector reached the device, and records in `collectors` which of them answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from agent.collectors import Collector, Step, Target, unreachable
from agent.collectors.cleaning import make_reading
from fleet.protocol.messages import Power, Reading, utcnow

log = logging.getLogger(__name__)

# Fields a later collector may fill when an earlier one did not give them.
_FIELDS = ("input", "temperature_c", "lamp_hours", "filter_hours", "uptime_s", "firmware", "errors")


def step_deadline(target: Target, collector: Collector) -> float:
    """Seconds one collector of the chain may take for one poll of `target`: what the
    collector says its poll may take (`deadline_s`, when it makes several requests in turn),
    or one request with its retries; a second on top so that it answers first."""
    own = getattr(collector, "deadline_s", None)
    if own is not None:
        return float(own(target)) + 1.0
    poll = target.profile.poll
    return poll.timeout_s * (poll.retries + 1) + 2.0


async def poll_chain(target: Target, collector_for: Callable[[str], Collector]) -> Reading:
    """One reading of `target` from every collector of its chain (never raises for the
    device's trouble; a collector's own bug is logged and counts as no answer)."""
    steps = target.steps or ()
    if len(steps) == 1:
        # One way only: its reading as it is (cleaned once already), saying who answered.
        reading = await poll_step(target, steps[0], collector_for)
        return reading.model_copy(update={"collectors": {steps[0].collector: reading.reachable}})
    started = utcnow()
    readings = await asyncio.gather(*(poll_step(target, step, collector_for) for step in steps))
    return merge_readings(target, list(zip(steps, readings, strict=True)), started)


async def poll_step(
    target: Target, step: Step, collector_for: Callable[[str], Collector]
) -> Reading:
    """One collector of `target`'s chain, under its own deadline; never raises for the
    device (no answer, or a collector's bug, is a Reading with reachable=False)."""
    at = target.at(step)
    deadline = 0.0
    try:
        collector = collector_for(step.collector)
        deadline = step_deadline(at, collector)
        return await asyncio.wait_for(collector.poll(at), deadline)
    except TimeoutError:
        return unreachable(
            at,
            f"{step.collector}: no answer within {deadline:.0f} s",
            fix="check that the device is powered and on the network",
        )
    except Exception as exc:  # one collector's bug must not cost the others' answers
        log.exception("collector %s failed on %s", step.collector, target.device.id)
        return unreachable(
            at, f"{step.collector}: agent error while polling ({exc})", fix="report this agent bug"
        )


def merge_readings(
    target: Target, answers: Sequence[tuple[Step, Reading]], ts: datetime | None = None
) -> Reading:
    """One Reading from the chain's, in chain order: each field from the first collector
    that gave it; power from the first that knew it (not `unknown`); reachable if any
    reached the device; `collectors` says which answered. Errors of collectors that did
    not answer are kept in the reading's `error` only when none answered."""
    answered = {step.collector: reading.reachable for step, reading in answers}
    reached = [reading for _, reading in answers if reading.reachable]
    ts = ts or (answers[0][1].ts if answers else utcnow())
    if not reached:
        why = "; ".join(
            f"{step.collector}: {reading.error or 'no answer'}" for step, reading in answers
        )
        return make_reading(target.device.id, ts, False, error=why[:500], collectors=answered)
    values: dict[str, Any] = {}
    power = Power.unknown
    metrics: dict[str, Any] = {}
    for reading in reached:
        if power == Power.unknown and reading.power != Power.unknown:
            power = reading.power
        for name in _FIELDS:
            if values.get(name) is None and getattr(reading, name) is not None:
                values[name] = getattr(reading, name)
        for key, value in reading.metrics.items():
            metrics.setdefault(key, value)
    return make_reading(
        target.device.id,
        ts,
        True,
        power=power,
        metrics=metrics,
        collectors=answered,
        **values,
    )
