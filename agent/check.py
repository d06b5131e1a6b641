"""`fleet-agent check`: a technician's doctor. Config, broker, each device, clock.

Each check gives ok/warn/fail and, when not ok, what to do. Nothing is published.
"""

from __future__ import annotations

import asyncio
import email.utils
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.poller import Poller, build_targets
from agent.publisher import BrokerError, MqttLink
from agent.reach import diagnose
from fleet.protocol.broker_url import BrokerAddress
from fleet.protocol.site_config import LoadedSite


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # ok, warn, fail
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail}


async def check_broker(address: BrokerAddress, client_id: str, timeout: float = 5) -> CheckResult:
    link = MqttLink(address, client_id=client_id)
    try:
        await link.start(first_connect_timeout=timeout)
    except BrokerError as exc:
        return CheckResult("broker", "fail", str(exc))
    try:
        if await link.wait_connected(0.1):
            return CheckResult(
                "broker", "ok", f"connected to {address.display()}, credentials accepted"
            )
        why = await asyncio.to_thread(diagnose, address, timeout)
        if why is None:
            why = (
                f"no MQTT answer within {timeout:.0f} s: check the broker URL, that the broker "
                f"runs, and that the firewall lets TCP {address.port} through"
            )
        return CheckResult(
            "broker",
            "fail",
            f"cannot reach {address.display()}: {why}. Readings wait in the outbox meanwhile.",
        )
    finally:
        await link.close()


async def check_devices(
    site: LoadedSite, address_map: dict[str, tuple[str, int]] | None
) -> list[CheckResult]:
    """One result per device: each way its profile lists (collector), whether it answered and
    what it said; ok if the chain the site runs reached it, warn if only a way the site
    has not enabled did, or if nothing answered a device read by reachability outside class
    hours (switched off, as expected), fail if nothing did."""
    from agent.chain_probe import probe_chains

    proposals = await probe_chains(site, address_map)
    poller = Poller(build_targets(site, address_map), lambda r: None)
    config = site.config
    in_class = config.timetable.in_class(datetime.now(UTC), config.tz)
    results = []
    for target, proposal in zip(poller.targets, proposals, strict=True):
        name = f"device {target.device.id} ({target.host})"
        running = {step.collector for step in target.steps or ()}
        ways = "; ".join(
            f"{w.collector} {'ok' if w.answered else 'no'}: {w.detail}" for w in proposal.ways
        )
        if any(w.answered and w.collector in running for w in proposal.ways):
            status = "ok"
        elif proposal.proposed:
            status = "warn"
            ways += (
                f". Only {', '.join(proposal.proposed)} answered, which this site does not "
                f"run: add it to agent.enable_collectors in {site.path.name}"
            )
        elif "reachability" in running and not in_class:
            # As the controller judges it: a panel is switched off after class.
            status = "warn"
            ways += ". Outside class hours: it may be switched off; check again during class"
        else:
            status = "fail"
        results.append(CheckResult(name, status, ways or "no collector for this profile"))
    return results


def check_clock(controller_url: str | None, max_skew_s: float = 30) -> CheckResult:
    """Readings are stamped by the agent's clock: a wrong clock misplaces them in reports."""
    now = datetime.now(UTC)
    if not controller_url:
        return CheckResult(
            "clock",
            "warn",
            f"local clock says {now.isoformat(timespec='seconds')}; pass --controller URL to "
            "compare it with the controller's, or check that NTP (timedatectl) is synchronised",
        )
    try:
        with urllib.request.urlopen(controller_url.rstrip("/") + "/healthz", timeout=5) as resp:
            date_header = resp.headers.get("Date")
    except OSError as exc:
        return CheckResult("clock", "warn", f"cannot reach the controller to compare: {exc}")
    if not date_header:
        return CheckResult("clock", "warn", "the controller sent no Date header to compare with")
    theirs = email.utils.parsedate_to_datetime(date_header)
    skew = (now - theirs).total_seconds()
    if abs(skew) > max_skew_s:
        return CheckResult(
            "clock",
            "fail",
            f"local clock is {skew:+.0f} s off the controller's: enable NTP "
            "(timedatectl set-ntp true) so readings land at the right time",
        )
    return CheckResult("clock", "ok", f"within {abs(skew):.0f} s of the controller")


async def run_checks(
    site: LoadedSite,
    broker: BrokerAddress,
    address_map: dict[str, tuple[str, int]] | None,
    controller_url: str | None,
) -> list[CheckResult]:
    devices = sum(1 for _ in site.config.devices())
    results = [
        CheckResult(
            "config",
            "ok",
            f"{site.path}: site {site.config.code}, {devices} devices, "
            f"timezone {site.config.site.timezone}",
        )
    ]
    broker_result, device_results = await asyncio.gather(
        check_broker(broker, f"check-{site.config.code}-{datetime.now(UTC).timestamp():.0f}"),
        check_devices(site, address_map),
    )
    results.append(broker_result)
    results.extend(device_results)
    results.append(await asyncio.to_thread(check_clock, controller_url))
    return results
