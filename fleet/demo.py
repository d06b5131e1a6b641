"""`fleet demo`: the whole product on one machine with nothing installed beyond the package.

SQLite in a data directory, the embedded broker on a free loopback port, the controller,
one agent per site config and its simulated devices, all in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import uvicorn
import yaml

from agent.runner import AgentOptions, SiteAgent
from agent.simulator import SimulatedSite, start_site
from agent.simulator.fault_schedule import (
    OPEN_LAB_CODE,
    demo_site_configs,
    plan_faults,
    run_faults,
)
from fleet.auth.demo_users import DEMO_PASSWORD, demo_tokens
from fleet.embedded_broker import EmbeddedBroker, free_port
from fleet.protocol.broker_url import BrokerAddress, parse_mqtt_url
from fleet.protocol.messages import utcnow
from fleet.protocol.site_config import (
    DEFAULT_PROFILES_DIR,
    DEFAULT_SITES_DIR,
    LoadedSite,
    load_sites,
)
from fleet.service import build_controller
from fleet.settings import Settings

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the demo owns Ctrl-C and stops in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class DemoOptions:
    """What `fleet demo` runs and where: data folder, address of the controller, site configs and
    profiles, the simulation's seed and faults, and the events and dicts through which a caller (a
    test) stops it, learns it is ready, and reads its URLs and demo users' API tokens."""

    # The data folder of every command (FLEET_DATA_DIR, ./data): `fleet users add` and
    # `fleet programme` after a demo read the demo's database.
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    sites_dir: Path = DEFAULT_SITES_DIR
    profiles_dir: Path = DEFAULT_PROFILES_DIR
    seed: int = 0
    say: Callable[[str], None] = print
    stop: asyncio.Event | None = None
    ready: asyncio.Event | None = None
    urls: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # demo user name -> API token
    # Devices failing and a site going offline on a schedule (agent.simulator.fault_schedule).
    faults: bool = True
    # The demo's start time (UTC): its own sites' timetables and the fault plan are built
    # from it, so a test can start the demo at any hour of the day.
    clock: Callable[[], datetime] = utcnow


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def run_demo(options: DemoOptions) -> None:
    """Run the whole fleet on this machine (embedded broker, controller, one agent and simulated
    devices per site) until `options.stop` is set or Ctrl-C, then stop them in order. Raises
    RuntimeError when the controller stops while starting."""
    stop = options.stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    sites_dir = options.sites_dir
    sites = load_sites(sites_dir, options.profiles_dir)
    started = options.clock()
    if options.faults:
        extra = demo_site_configs(sites, started)
        sites_dir = _with_demo_sites(options.sites_dir, options.data_dir / "demo-sites", extra)
        sites = load_sites(sites_dir, options.profiles_dir)
        codes = {str(c["site"]["code"]) for c in extra}  # type: ignore[index]
        options.say(
            "the demo adds its evening school (simulated; its class ended an hour ago, so a "
            "projector left on raises left_on_after_hours, and a training planned yesterday "
            "is overdue)"
            + (
                "; no site is in class now: also its open lab (simulated, in class around the "
                "clock), where a device goes unreachable and its alert opens after 10 min"
                if OPEN_LAB_CODE in codes
                else ""
            )
        )

    broker = EmbeddedBroker()
    await broker.start()
    settings = Settings(
        data_dir=options.data_dir,
        mqtt_url=broker.url,
        sites_dir=sites_dir,
        profiles_dir=options.profiles_dir,
    )
    controller = await asyncio.to_thread(build_controller, settings)
    options.tokens.update(await asyncio.to_thread(demo_tokens, controller.engine))
    port = options.port if options.port and _port_free(options.host, options.port) else free_port()
    server = _Server(
        uvicorn.Config(controller.app, host=options.host, port=port, log_level="warning")
    )
    server_task = asyncio.create_task(server.serve(), name="controller")
    while not server.started:
        if server_task.done():
            await server_task  # surfaces why it could not start
            raise RuntimeError("the controller stopped while starting")
        await asyncio.sleep(0.05)

    agents: list[SiteAgent] = []
    simulations = []
    agent_tasks = []
    address = parse_mqtt_url(broker.url)
    for site in sites:
        simulated = await start_site(site, seed=options.seed)
        simulations.append(simulated)
        agent = SiteAgent(
            site,
            address,
            AgentOptions(data_dir=options.data_dir / "agents", address_map=simulated.address_map),
        )
        agents.append(agent)
        agent_tasks.append(asyncio.create_task(agent.run(), name=f"agent-{site.config.code}"))

    faults = _schedule_faults(options, started, sites, simulations, agents, agent_tasks, address)
    base = f"http://{options.host}:{port}"
    options.urls.update(base=base, broker=broker.url)
    devices = sum(len(s.address_map) for s in simulations)
    options.say(
        f"classroom-fleet demo: {len(sites)} sites, {devices} simulated devices, "
        f"broker {broker.url}, {settings.where()}\n"
        f"  controller   {base}/\n"
        f"  API docs     {base}/docs\n"
        f"  sites        {base}/api/v1/sites\n"
        f"  devices      {base}/api/v1/devices\n"
        + "".join(f"  token        {name}: {token}\n" for name, token in options.tokens.items())
        + f"  (password of each demo user: {DEMO_PASSWORD}; send 'Authorization: Bearer "
        "<token>', or log in at POST /api/v1/auth/token)\n"
        "Ctrl-C stops everything."
    )
    if options.ready:
        options.ready.set()
    try:
        await stop.wait()
    finally:
        options.say("stopping: agents, simulated devices, controller, broker")
        if faults is not None:
            faults.cancel()
            await asyncio.gather(faults, return_exceptions=True)
        for agent in agents:
            agent.stop.set()
        await asyncio.gather(*agent_tasks, return_exceptions=True)
        for simulated in simulations:
            await simulated.close()
        server.should_exit = True
        await server_task
        controller.engine.dispose()
        await broker.stop()


def _with_demo_sites(sites_dir: Path, into: Path, configs: list[dict[str, object]]) -> Path:
    """A folder with the site configs of `sites_dir` and the demo's own `configs`
    (agent.simulator.fault_schedule.demo_site_configs), one YAML each, named by its code; the
    real configs are copied unchanged, and the folder's old configs (of an earlier demo)
    replaced."""
    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob("*.yaml"):
        old.unlink()
    for path in sites_dir.glob("*.yaml"):
        shutil.copyfile(path, into / path.name)
    for config in configs:
        code = config["site"]["code"]  # type: ignore[index]
        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        (into / f"{code}.yaml").write_text(text, encoding="utf-8")
    return into


def _schedule_faults(
    options: DemoOptions,
    started: datetime,
    sites: list[LoadedSite],
    simulations: list[SimulatedSite],
    agents: list[SiteAgent],
    agent_tasks: list[asyncio.Task[None]],
    address: BrokerAddress,
) -> asyncio.Task[None] | None:
    """The demo's scheduled faults (agent.simulator.fault_schedule): devices unreachable,
    faulty, hot, worn, left on, and one site offline and back, in the first minutes."""
    if not options.faults:
        return None
    codes = [site.config.site.code for site in sites]

    async def stop_agent(code: str) -> None:
        n = codes.index(code)
        agents[n].stop.set()
        await asyncio.gather(agent_tasks[n], return_exceptions=True)

    async def start_agent(code: str) -> None:
        n = codes.index(code)
        agents[n] = SiteAgent(
            sites[n],
            address,
            AgentOptions(
                data_dir=options.data_dir / "agents", address_map=simulations[n].address_map
            ),
        )
        agent_tasks[n] = asyncio.create_task(agents[n].run(), name=f"agent-{code}")

    plan = plan_faults(sites, started)
    options.say(
        "demo faults, on a schedule: "
        + "; ".join(
            f"+{int(f.after.total_seconds())} s {f.kind} {f.device or f.site}" for f in plan
        )
    )
    return asyncio.create_task(
        run_faults(plan, dict(zip(codes, simulations, strict=True)), stop_agent, start_agent,
                   options.say),
        name="demo-faults",
    )  # fmt: skip
