"""How fast the agent's SNMP collector polls, against the limit of raw pysnmp on this machine.

    python -m bench.agent_poll [--devices 500] [--rounds 3] [--quick]

N simulated devices run in a child process (so their CPU is not counted as the agent's). The
limit is raw `get_cmd` calls with the same OIDs, one shared engine and the same concurrency;
then our SnmpCollector polls the same devices through the Target/Collector interface. Printed:
devices per second, CPU seconds per 1000 polls, the ratio to the limit, and whether a site of
N devices fits a 60 s poll cycle under 30 % of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from agent.collectors import Target, make_collector, target_for
from fleet.protocol.profiles import Profile, load_profiles
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig

CYCLE_S = 60.0
CPU_BUDGET = 0.30  # share of one core the agent may spend polling


@dataclass
class Run:
    name: str
    polls: int
    ok: int
    wall_s: float
    cpu_s: float

    @property
    def per_second(self) -> float:
        return self.polls / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.polls * 1000 if self.polls else 0.0


def _serve_responders(count: int, profile_id: str, conn: Connection) -> None:
    """Child process: run `count` simulated devices until the parent says stop."""
    from agent.simulator import start_devices

    async def serve() -> None:
        profile = load_profiles(DEFAULT_PROFILES_DIR)[profile_id]
        simulated = await start_devices(count, profile)
        conn.send(simulated.address_map)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await simulated.close()

    asyncio.run(serve())


async def _measure(
    name: str, targets: list[Target], poll: Callable[[Target], Awaitable[bool]], concurrency: int
) -> Run:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(target: Target) -> bool:
        async with semaphore:
            return await poll(target)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(one(t) for t in targets))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return Run(name, len(targets), sum(results), wall, cpu)


async def _raw_pysnmp(targets: list[Target], concurrency: int, rounds: int) -> Run:
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        get_cmd,
    )

    engine = SnmpEngine()
    context = ContextData()
    profile = targets[0].profile
    assert profile.snmp is not None
    var_binds = [ObjectType(ObjectIdentity(o.oid)) for o in profile.snmp.objects]
    auth = CommunityData(targets[0].community, mpModel=1)
    transports = {
        t.device.id: await UdpTransportTarget.create(
            (t.host, t.port), timeout=profile.poll.timeout_s, retries=profile.poll.retries
        )
        for t in targets
    }

    async def poll(target: Target) -> bool:
        error_indication, error_status, _, _ = await get_cmd(
            engine, auth, transports[target.device.id], context, *var_binds, lookupMib=False
        )
        return not error_indication and not int(error_status)

    await _measure("warm-up", targets, poll, concurrency)
    run = await _measure("raw pysnmp get_cmd", targets * rounds, poll, concurrency)
    engine.close_dispatcher()
    return run


async def _collector(targets: list[Target], concurrency: int, rounds: int) -> Run:
    collector = make_collector("snmp")

    async def poll(target: Target) -> bool:
        return (await collector.poll(target)).reachable

    await _measure("warm-up", targets, poll, concurrency)
    run = await _measure("SnmpCollector.poll", targets * rounds, poll, concurrency)
    await collector.close()
    return run


def _targets(profile: Profile, address_map: dict[str, tuple[str, int]]) -> list[Target]:
    targets = []
    for device_id, (host, port) in sorted(address_map.items()):
        device = DeviceConfig(id=device_id, profile=profile.id, address=host)
        targets.append(target_for(device, profile, (host, port)))
    return targets


def _report(devices: int, raw: Run, ours: Run, concurrency: int) -> None:
    print("responders: a separate process (their CPU is not counted below)")
    print(f"devices: {devices}, concurrency: {concurrency}")
    for run in (raw, ours):
        print(
            f"{run.name:>20}: {run.polls} polls ({run.ok} answered) in {run.wall_s:.2f} s = "
            f"{run.per_second:.0f} devices/s, {run.cpu_per_1000:.2f} CPU s per 1000 polls"
        )
    ratio = ours.per_second / raw.per_second if raw.per_second else 0.0
    cpu_ratio = raw.cpu_per_1000 / ours.cpu_per_1000 if ours.cpu_per_1000 else 0.0
    print(f"limit (raw pysnmp): {raw.per_second:.0f} devices/s")
    print(f"ratio (ours / limit, throughput): {ratio:.2f}")
    print(f"ratio (limit / ours, CPU per poll): {cpu_ratio:.2f}")
    cycle_share = ours.cpu_per_1000 * devices / 1000 / CYCLE_S
    cycle_wall = devices / ours.per_second if ours.per_second else float("inf")
    fits = cycle_wall < CYCLE_S and cycle_share < CPU_BUDGET
    print(
        f"{devices} devices per {CYCLE_S:.0f} s cycle: {cycle_wall:.1f} s of polling, "
        f"{cycle_share:.1%} of a core -> {'fits' if fits else 'DOES NOT FIT'} "
        f"(budget {CPU_BUDGET:.0%} of a core)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_poll", description=__doc__)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="polls of every device measured")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--profile", default="seewo-panel")
    parser.add_argument("--quick", action="store_true", help="20 devices, 1 round: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.rounds = 20, 1
    profile = load_profiles(DEFAULT_PROFILES_DIR)[args.profile]

    # spawn, not fork: the parent may already hold threads or an event loop (pytest does).
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    child = context.Process(
        target=_serve_responders, args=(args.devices, args.profile, child_end), daemon=True
    )
    child.start()
    try:
        if not parent_end.poll(60):
            raise RuntimeError("the simulated devices did not start within 60 s")
        targets = _targets(profile, parent_end.recv())

        async def both() -> tuple[Run, Run]:
            raw = await _raw_pysnmp(targets, args.concurrency, args.rounds)
            ours = await _collector(targets, args.concurrency, args.rounds)
            return raw, ours

        raw, ours = asyncio.run(both())
    finally:
        parent_end.send("stop")
        child.join(10)
        if child.is_alive():
            child.terminate()
    _report(args.devices, raw, ours, args.concurrency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
