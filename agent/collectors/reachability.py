"""The `reachability` collector: is the device there at all? For every device with an address.

Panels with no management protocol (public sources show none for Seewo, Dazzleview or the
Weidong kit, and MAXHUB's LAN control can be switched off) still get reachable or
unreachable from this, and with the site's timetable the controller tells a panel that is
off outside class from one that is unreachable during class (fleet/devices/state.py).

Two ways, as the profile says (`reachability:` in firmware_profiles/*.yaml):
- ICMP echo through icmplib: first an unprivileged datagram socket, which Linux allows to the
  groups in `net.ipv4.ping_group_range`; if the kernel refuses it, a raw socket, which needs
  root or CAP_NET_RAW. If both are refused the reading says so and what to do, rather than
  calling the device unreachable.
- A TCP connect to the port the profile names (`tcp_port`), for devices or sites that drop
  ICMP. A completed connect is reachable; a refused one is not (nothing of the device serves
  its port: off, or still booting); neither is a silent one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from agent.collectors import Target, register, unreachable
from agent.collectors.cleaning import make_reading
from fleet.protocol.messages import Reading, utcnow


class IcmpNotPermittedError(PermissionError):
    """Neither an unprivileged nor a raw ICMP socket is allowed to this process."""


ICMP_FIX = (
    "allow unprivileged ICMP (sysctl net.ipv4.ping_group_range='0 2147483647'), run the "
    "agent with CAP_NET_RAW, or give the profile a reachability.tcp_port to connect to"
)


async def icmp_echo(host: str, count: int, timeout: float) -> tuple[float | None, str]:
    """The best round-trip time in ms (None if no echo was answered) and the socket used:
    `unprivileged` (datagram) or `raw`.

    Raises IcmpNotPermittedError when this process may open no ICMP socket at all."""
    from icmplib import async_ping
    from icmplib.exceptions import ICMPLibError, SocketPermissionError

    for privileged in (False, True):
        try:
            host_result = await async_ping(
                host, count=count, interval=0.2, timeout=timeout, privileged=privileged
            )
        except SocketPermissionError:
            continue
        except ICMPLibError as exc:
            raise OSError(str(exc)) from None
        mode = "raw" if privileged else "unprivileged"
        return (host_result.min_rtt if host_result.is_alive else None), mode
    raise IcmpNotPermittedError(f"no ICMP socket allowed: {ICMP_FIX}")


async def tcp_connect(host: str, port: int, timeout: float) -> float:
    """Milliseconds to a completed TCP connect; raises OSError (refused, timeout, no route)."""
    started = time.monotonic()
    _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    elapsed = (time.monotonic() - started) * 1000
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return elapsed


@register("reachability")
class ReachabilityCollector:
    """Reachable or not, and the round-trip time (`metrics.rtt_ms`); power stays unknown."""

    def deadline_s(self, target: Target) -> float:
        """Each try (echo or connect) under the poll timeout, in turn."""
        return target.profile.poll.timeout_s * target.profile.reachability.count + 0.5

    async def poll(self, target: Target) -> Reading:
        """Reachable, with `metrics.rtt_ms`, if a TCP connect to the profile's port (or, without
        one, an ICMP echo) succeeds within the profile's tries; otherwise an unreachable Reading
        that says what to check."""
        settings = target.profile.reachability
        timeout = target.profile.poll.timeout_s
        ts = utcnow()
        if target.port:
            last: OSError | None = None
            for _ in range(settings.count):
                try:
                    rtt = await tcp_connect(target.host, target.port, timeout)
                except ConnectionRefusedError:
                    return unreachable(
                        target,
                        f"TCP connect to port {target.port} refused",
                        ts,
                        fix="the device is off or still starting; check it is powered",
                    )
                except (OSError, TimeoutError) as exc:
                    last = exc if isinstance(exc, OSError) else None
                    continue
                return make_reading(target.device.id, ts, True, metrics={"rtt_ms": round(rtt, 2)})
            why = f"no TCP answer on port {target.port}" + (f" ({last})" if last else "")
            return unreachable(
                target, why, ts, fix="check that the device is powered and on the network"
            )
        try:
            rtt_ms, mode = await icmp_echo(target.host, settings.count, timeout)
        except IcmpNotPermittedError:
            return unreachable(target, "ICMP echo not permitted to the agent", ts, fix=ICMP_FIX)
        except OSError as exc:
            return unreachable(target, f"ICMP echo failed: {exc}", ts)
        if rtt_ms is None:
            return unreachable(
                target,
                f"no ICMP echo reply to {settings.count} requests",
                ts,
                fix="check that the device is powered and on the network",
            )
        metrics = {"rtt_ms": round(rtt_ms, 2), "icmp_socket": mode}
        return make_reading(target.device.id, ts, True, metrics=metrics)

    async def close(self) -> None:
        """Nothing to release: each try opens and closes its own socket."""
        return None
