"""`fleet-agent check`: a technician's doctor. Config, broker, each device, clock.

Each check gives ok/warn/fail and, when not ok, what to do. Nothing is published.
"""

from __future__ import annotations

import asyncio
import email.utils
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

from agent.poller import Poller, build_targets, deadline_of
from agent.publisher import BrokerError, MqttLink
from agent.reach import diagnose
from fleet.protocol.broker_url import BrokerAddress
from fleet.protocol.site_config import LoadedSite


@dataclass(frozen=True)
class CheckResult:
    """One line of `fleet-agent check`'s report: what was checked, ok/warn/fail, and the detail
    (with what to do when not ok)."""

    name: str
    status: str  # ok, warn, fail
    detail: str

    def as_dict(self) -> dict[str, str]:
        """The result as `check --json` prints it: `{"check", "status", "detail"}`."""
        return {"check": self.name, "status": self.status, "detail": self.detail}


async def _login(address: BrokerAddress, client_id: str, timeout: float) -> str | None:
    """None when the broker accepted this login; its refusal; or "" when it did not answer."""
    link = MqttLink(address, client_id=client_id, log_unreachable=False)
    try:
        await link.start(first_connect_timeout=timeout)
    except BrokerError as exc:
        return str(exc) or "refused"
    try:
        return None if await link.wait_connected(0.1) else ""
    finally:
        await link.close()


async def check_broker(address: BrokerAddress, client_id: str, timeout: float = 5) -> CheckResult:
    """Whether the broker answers and takes these credentials. "Accepted" is said only when
    the broker proves it checks: the same user with a wrong password must be refused."""
    refusal = await _login(address, client_id, timeout)
    if refusal:
        return CheckResult("broker", "fail", refusal)
    if refusal == "":
        why = await asyncio.to_thread(diagnose, address, timeout)
        if why is None:
            why = (
                f"no MQTT answer within {timeout:.0f} s: check the broker URL, that the broker "
                f"runs, and that the firewall lets TCP {address.port} through"
            )
        return CheckResult(
            "broker",
            "fail",
            f"cannot reach {address.display()}: {why}. (check sends nothing; `fleet-agent run` "
            "keeps readings on disk until the broker is back.)",
        )
    if not address.username and address.cert_file:
        return CheckResult(
            "broker", "ok", f"connected to {address.display()} with client certificate"
        )
    if not address.username:
        return CheckResult(
            "broker",
            "warn",
            f"connected to {address.display()} without a login: this broker lets anyone in. "
            "Fix: put the site's user in the URL (mqtts://site-<code>@host) and its password in "
            "FLEET_MQTT_PASSWORD, as `fleet-agent enroll` writes them",
        )
    wrong = replace(address, password=secrets.token_urlsafe(18))
    if await _login(wrong, client_id + "-wrong", timeout) is None:
        return CheckResult(
            "broker",
            "warn",
            f"connected to {address.display()}, but the broker also takes a wrong password for "
            f"{address.username!r}: it checks no credentials, so these were not verified. Fix: "
            "turn anonymous access off and load `fleet mqtt-auth export`'s passwd and acl",
        )
    return CheckResult(
        "broker",
        "ok",
        f"connected to {address.display()}; credentials accepted (a wrong password is refused)",
    )


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
    parts = urlsplit(controller_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return CheckResult(
            "clock",
            "fail",
            f"--controller {controller_url[:80]!r} is not an http(s) URL: pass the "
            "controller's address, e.g. https://fleet.example",
        )
    url = controller_url.rstrip("/") + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310  (http(s) checked above)
            date_header = resp.headers.get("Date")
    except urllib.error.HTTPError as exc:
        date_header = exc.headers.get("Date")  # a 503 still carries the controller's time
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        reason = getattr(reason, "strerror", None) or reason
        return CheckResult(
            "clock",
            "warn",
            f"cannot reach the controller at {url} ({reason}) to compare clocks: check "
            "--controller and the site's link",
        )
    if not date_header:
        return CheckResult("clock", "warn", "the controller sent no Date header to compare with")
    try:
        theirs = email.utils.parsedate_to_datetime(date_header)
    except (ValueError, TypeError, OverflowError):
        # Not an HTTP date (RFC 9110 5.6.7): a proxy's or another server's, perhaps.
        return CheckResult(
            "clock",
            "warn",
            f"the controller's Date header {date_header[:60]!r} is not a date: cannot compare "
            "clocks; check that --controller is the controller",
        )
    if theirs.tzinfo is None:
        theirs = theirs.replace(tzinfo=UTC)  # RFC 5322's -0000: UTC, the sender's zone untold
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
    say: Callable[[str], None] = lambda _line: None,
) -> list[CheckResult]:
    """Every check of a loaded site; `say` hears progress lines as the slow ones run (the
    devices take up to their profiles' timeouts times their tries)."""
    devices = sum(1 for _ in site.config.devices())
    results = [
        CheckResult(
            "config",
            "ok",
            f"{site.path}: site {site.config.code}, {devices} devices, "
            f"timezone {site.config.site.timezone}",
        )
    ]
    results += await check_broker_and_devices(site, broker, address_map, say)
    say("checking the clock ...")
    results.append(await asyncio.to_thread(check_clock, controller_url))
    return results


async def check_broker_and_devices(
    site: LoadedSite,
    broker: BrokerAddress,
    address_map: dict[str, tuple[str, int]] | None,
    say: Callable[[str], None],
) -> list[CheckResult]:
    """The broker check and the device checks, run at the same time; the broker's result comes
    first, then one per device. `say` hears a line as each part starts and ends."""
    targets = build_targets(site, address_map)
    slowest = max((deadline_of(t) for t in targets), default=0)
    say(
        f"checking the broker {broker.display()} and {len(targets)} devices "
        f"(up to {max(slowest, 10):.0f} s) ..."
    )

    async def broker_check() -> CheckResult:
        result = await check_broker(
            broker, f"check-{site.config.code}-{datetime.now(UTC).timestamp():.0f}"
        )
        say(f"broker: {result.status}")
        return result

    async def device_checks() -> list[CheckResult]:
        results = await check_devices(site, address_map)
        answered = sum(r.status == "ok" for r in results)
        say(f"devices: {answered} of {len(results)} answered")
        return results

    broker_result, device_results = await asyncio.gather(broker_check(), device_checks())
    return [broker_result, *device_results]


async def run_checks_without_config(
    broker: BrokerAddress, controller_url: str | None, problems: list[str]
) -> list[CheckResult]:
    """The checks a site config that cannot be loaded still allows: the config's problems
    as failed checks, then the broker and the clock."""
    results = [CheckResult("config", "fail", problem) for problem in problems]
    results.append(await check_broker(broker, f"check-{datetime.now(UTC).timestamp():.0f}"))
    results.append(await asyncio.to_thread(check_clock, controller_url))
    return results
