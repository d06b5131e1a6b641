"""E-mail notifications end to end against a real SMTP server on loopback (aiosmtpd):
subscribers get one message with the site's local time and the alert's link, and one more
when it is resolved (who, when, the link), whether by hand or by itself; an alert nobody
acknowledges escalates to the site's technicians, then ops; a silence mutes e-mail and the
webhook alike until it ends; a message pending when the controller stops is sent once after
it starts again."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, func, select, update
from sqlmodel import Session

from fleet.alerts import actions, silences
from fleet.alerts.evaluation import AlertRules, evaluate_devices
from fleet.alerts.mail import Mailer, send_due
from fleet.alerts.models import Alert, AlertSubscription, EmailDelivery, WebhookDelivery
from fleet.alerts.notices import SUBSCRIPTIONS, USERS, NoticePolicy, notify_due, resolved_untold
from fleet.alerts.schemas import ResolveIn
from fleet.alerts.webhook import Webhook
from fleet.alerts.webhook import send_due as send_webhooks
from fleet.auth.users import add_user
from fleet.db import make_engine
from fleet.embedded_broker import free_port
from fleet.ingest.pipeline import Ingest
from fleet.models import Device
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from tests.fixtures_db import health, reading
from tests.procs import Stack, wait_for
from tests.smtp_sink import Sink, running_sink
from tests.webhook_receiver import running_receiver

T = datetime.fromisoformat("2025-03-03T03:00:00+00:00")  # 11:00 in Kuala Lumpur
DEVICE = "upm-sc2-projector"
RULES = AlertRules(DEFAULT_PROFILES_DIR, unreachable_after=timedelta(minutes=10), notify=True)
PUBLIC = "https://fleet.example.edu"
DELAY = timedelta(minutes=10)  # critical: over-temperature is critical
POLICY = NoticePolicy(PUBLIC, {"critical": DELAY, "warning": 4 * DELAY})


@pytest.fixture
def sink() -> Iterator[tuple[Sink, Mailer]]:
    with running_sink() as (sink, port):
        yield sink, Mailer("127.0.0.1", port, "fleet@example.edu")


def subscribe(
    engine: Engine, user: str, role: str, email: str, site: str | None, **kw: object
) -> None:
    with Session(engine) as session:
        sites = kw.pop("sites", None)
        vendor = kw.pop("vendor", None)
        add_user(session, user, role, sites=sites, vendor=vendor)  # type: ignore[arg-type]
        session.add(
            AlertSubscription(
                user_name=user,
                email=email,
                site_code=site,
                min_severity=str(kw.get("min_severity", "warning")),
                created_at=T,
            )
        )
        session.commit()


def hot(ingest: Ingest, engine: Engine, *minutes: int) -> datetime:
    """The projector hot for long enough to open its alert; the time of the last reading."""
    for minute in minutes:
        t = T + timedelta(minutes=minute)
        ingest.handle([health("upm", [reading(DEVICE, t, temperature_c=90)])])
        evaluate_devices(engine, RULES, t, [DEVICE])
    return t


def run(engine: Engine, mailer: Mailer, now: datetime) -> int:
    notify_due(engine, POLICY, now)
    return send_due(engine, mailer, now)


def the_alert(engine: Engine) -> Alert:
    with Session(engine) as session:
        [alert] = session.exec(select(Alert)).scalars().all()  # type: ignore[call-overload]
        return alert


def test_subscriber_gets_one_message_in_site_time_with_the_alert_link(
    ingest: Ingest, registered: Engine, sink: tuple[Sink, Mailer]
) -> None:
    smtp, mailer = sink
    subscribe(registered, "tech-upm", "technician", "tech@upm.example", "upm", sites=["upm"])
    # Out of scope or out of interest: another site's technician naming upm is never told,
    # nor one who subscribed to tuit only, nor a vendor of another make.
    subscribe(registered, "tech-tuit", "technician", "tech@tuit.example", None, sites=["tuit"])
    subscribe(registered, "vendor-x", "vendor", "x@vendor.example", None, vendor="NoSuchMake")
    opened = hot(ingest, registered, -2, -1, 0)

    assert run(registered, mailer, opened) == 1
    assert run(registered, mailer, opened + timedelta(seconds=5)) == 0  # nothing twice
    [(rcpt, message)] = smtp.received()
    assert rcpt == ["tech@upm.example"]
    alert = the_alert(registered)
    body = message.get_content()
    assert f"{PUBLIC}/alerts/{alert.id}" in body
    assert "2025-03-03 11:00 Asia/Kuala_Lumpur" in body  # 03:00 UTC at the site
    assert "over_temperature" in message["Subject"] and "upm" in message["Subject"]
    assert alert.notice_level == 1 and alert.noticed_at == opened


def test_unacknowledged_alert_escalates_to_technicians_then_ops(
    ingest: Ingest, registered: Engine, sink: tuple[Sink, Mailer]
) -> None:
    smtp, mailer = sink
    subscribe(registered, "tech-upm", "technician", "t1@upm.example", "upm", sites=["upm"])
    # A technician of upm subscribed to tuit's alerts only: not told at first, called on
    # escalation because upm is theirs.
    subscribe(
        registered, "tech2-upm", "technician", "t2@upm.example", "tuit", sites=["upm", "tuit"]
    )
    subscribe(registered, "ops-a", "ops", "ops@fleet.example", "tuit")
    opened = hot(ingest, registered, -2, -1, 0)
    run(registered, mailer, opened)
    assert [r for r, _ in smtp.received()] == [["t1@upm.example"]]

    run(registered, mailer, opened + DELAY - timedelta(seconds=1))
    assert len(smtp.received()) == 1  # not yet
    run(registered, mailer, opened + DELAY)
    assert smtp.to("t2@upm.example") and not smtp.to("ops@fleet.example")
    assert "escalated to site technicians" in smtp.to("t2@upm.example")[0]["Subject"]
    alert = the_alert(registered)
    assert alert.notice_level == 2 and alert.escalated_at == opened + DELAY

    run(registered, mailer, opened + 2 * DELAY)
    assert len(smtp.to("ops@fleet.example")) == 1
    assert the_alert(registered).notice_level == 3
    run(registered, mailer, opened + 5 * DELAY)
    assert len(smtp.received()) == 3  # each address once


def test_those_told_of_an_alert_hear_who_resolved_it_and_when_once(
    ingest: Ingest, registered: Engine, sink: tuple[Sink, Mailer]
) -> None:
    smtp, mailer = sink
    subscribe(registered, "tech-upm", "technician", "t1@upm.example", "upm", sites=["upm"])
    subscribe(
        registered, "tech2-upm", "technician", "t2@upm.example", "tuit", sites=["upm", "tuit"]
    )
    subscribe(registered, "ops-a", "ops", "ops@fleet.example", "upm", min_severity="critical")
    opened = hot(ingest, registered, -2, -1, 0)
    run(registered, mailer, opened)
    assert sorted(r[0] for r, _ in smtp.received()) == ["ops@fleet.example", "t1@upm.example"]
    alert_id = the_alert(registered).id
    assert alert_id is not None
    resolved_at = opened + timedelta(minutes=5)  # before any escalation
    with Session(registered) as session:
        actions.resolve_by_hand(
            session,
            alert_id,
            ResolveIn(by="tech-upm", note="fan cleaned, vents unblocked"),
            resolved_at,
            notify=False,
        )
    assert run(registered, mailer, resolved_at) == 2
    assert run(registered, mailer, resolved_at + timedelta(minutes=30)) == 0  # once
    ends = [(rcpt, m) for rcpt, m in smtp.received() if "[resolved]" in m["Subject"]]
    # The same people who were told it opened; the technician of upm who subscribed to tuit
    # only was never told of it, so is not told it ended.
    assert sorted(r[0] for r, _ in ends) == ["ops@fleet.example", "t1@upm.example"]
    body = ends[0][1].get_content()
    assert "Resolved by: tech-upm" in body
    assert "Resolution: fan cleaned, vents unblocked" in body
    assert "Resolved: 2025-03-03 11:05 Asia/Kuala_Lumpur (site local time)" in body
    assert f"{PUBLIC}/alerts/{alert_id}" in body
    assert the_alert(registered).resolve_noticed_at == resolved_at


def test_an_alert_that_clears_by_itself_is_told_as_such(
    ingest: Ingest, registered: Engine, sink: tuple[Sink, Mailer]
) -> None:
    smtp, mailer = sink
    subscribe(registered, "tech-upm", "technician", "t1@upm.example", "upm", sites=["upm"])
    opened = hot(ingest, registered, -2, -1, 0)
    run(registered, mailer, opened)
    for minute in (1, 3, 6):  # cool for long enough: resolved by the rules
        t = T + timedelta(minutes=minute)
        ingest.handle([health("upm", [reading(DEVICE, t, temperature_c=50)])])
        evaluate_devices(registered, RULES, t, [DEVICE])
    assert the_alert(registered).state == "resolved"
    run(registered, mailer, T + timedelta(minutes=7))
    [end] = [m for m in smtp.to("t1@upm.example") if "[resolved]" in m["Subject"]]
    assert "Resolved by: nobody: the condition cleared by itself" in end.get_content()


def test_word_of_the_end_skips_who_has_since_unsubscribed_or_left_the_site(
    ingest: Ingest, registered: Engine, sink: tuple[Sink, Mailer]
) -> None:
    smtp, mailer = sink
    subscribe(registered, "tech-upm", "technician", "t1@upm.example", "upm", sites=["upm"])
    subscribe(registered, "tech2-upm", "technician", "t2@upm.example", "upm", sites=["upm"])
    subscribe(registered, "tech3-upm", "technician", "t3@upm.example", "upm", sites=["upm"])
    opened = hot(ingest, registered, -2, -1, 0)
    run(registered, mailer, opened)
    assert len(smtp.received()) == 3
    # One unsubscribes; another no longer works at upm (the resolution note is not theirs).
    with registered.begin() as conn:
        conn.execute(delete(SUBSCRIPTIONS).where(SUBSCRIPTIONS.c.user_name == "tech2-upm"))
        conn.execute(update(USERS).where(USERS.c.name == "tech3-upm").values(sites=["tuit"]))
    alert_id = the_alert(registered).id
    assert alert_id is not None
    resolved_at = opened + timedelta(minutes=5)
    with Session(registered) as session:
        actions.resolve_by_hand(
            session,
            alert_id,
            ResolveIn(by="tech-upm", note="vents cleared"),
            resolved_at,
            notify=False,
        )
    assert run(registered, mailer, resolved_at) == 1
    ends = [rcpt for rcpt, m in smtp.received() if "[resolved]" in m["Subject"]]
    assert [r[0] for r in ends] == ["t1@upm.example"]


def test_acknowledged_alert_does_not_escalate(
    ingest: Ingest, registered: Engine, sink: tuple[Sink, Mailer]
) -> None:
    smtp, mailer = sink
    subscribe(registered, "tech-upm", "technician", "t1@upm.example", "upm", sites=["upm"])
    subscribe(registered, "ops-a", "ops", "ops@fleet.example", "tuit")
    opened = hot(ingest, registered, -2, -1, 0)
    run(registered, mailer, opened)
    with Session(registered) as session:
        alert = session.get(Alert, the_alert(registered).id)
        assert alert is not None
        alert.state, alert.acknowledged_by = "acknowledged", "tech-upm"
        session.add(alert)
        session.commit()
    run(registered, mailer, opened + 3 * DELAY)
    assert len(smtp.received()) == 1 and the_alert(registered).notice_level == 1


def test_silence_mutes_email_and_webhook_until_it_ends(
    ingest: Ingest, registered: Engine, sink: tuple[Sink, Mailer]
) -> None:
    smtp, mailer = sink
    subscribe(registered, "tech-upm", "technician", "t1@upm.example", "upm", sites=["upm"])
    with Session(registered) as session:
        device = session.get(Device, DEVICE)
        assert device is not None
        silence = silences.create(
            session,
            site="upm",
            room=device.room_id,
            device=None,
            reason="projector room under repair",
            by="tech-upm",
            starts_at=T - timedelta(hours=1),
            # Planned for a day: ended early below, it must not hold anything to its end.
            ends_at=T + timedelta(hours=24),
            now=T - timedelta(hours=1),
        )
        silence_id = silence.id
    with running_receiver() as receiver:
        webhook = Webhook(receiver.url, "s3cret", max_attempts=8)
        opened = hot(ingest, registered, -2, -1, 0)
        for minutes in (0, 1, 30, 119):
            now = opened + timedelta(minutes=minutes)
            run(registered, mailer, now)
            send_webhooks(registered, webhook, now)
        assert smtp.received() == [] and receiver.received == []
        alert = the_alert(registered)
        assert alert.silence_id == silence_id and alert.silenced_by == "tech-upm"
        assert alert.notice_level == 0  # recorded, told to nobody

        # The silence ends early, by hand: what is still open is told now, once.
        ended = opened + timedelta(minutes=120)
        with Session(registered) as session:
            silences.expire(session, silence_id or 0, None, "tech-upm", ended)
        run(registered, mailer, ended)
        send_webhooks(registered, webhook, ended)
        run(registered, mailer, ended + timedelta(seconds=5))
        send_webhooks(registered, webhook, ended + timedelta(seconds=5))
        assert len(smtp.to("t1@upm.example")) == 1
        assert [e["event"] for e in receiver.events()] == ["alert.opened"]


def test_alert_resolved_under_a_silence_notifies_nobody_after(
    ingest: Ingest, registered: Engine, sink: tuple[Sink, Mailer]
) -> None:
    smtp, mailer = sink
    subscribe(registered, "tech-upm", "technician", "t1@upm.example", "upm", sites=["upm"])
    with Session(registered) as session:
        silences.create(
            session,
            site="upm",
            room=None,
            device=DEVICE,
            reason="planned power cut",
            by="ops-a",
            starts_at=T - timedelta(hours=1),
            ends_at=T + timedelta(hours=1),
            now=T - timedelta(hours=1),
        )
    with running_receiver() as receiver:
        webhook = Webhook(receiver.url, "s3cret", max_attempts=8)
        opened = hot(ingest, registered, -2, -1, 0)
        run(registered, mailer, opened)
        for minute in (1, 3, 6):  # cool for long enough: resolved
            t = T + timedelta(minutes=minute)
            ingest.handle([health("upm", [reading(DEVICE, t, temperature_c=50)])])
            evaluate_devices(registered, RULES, t, [DEVICE])
        after = T + timedelta(hours=2)
        run(registered, mailer, after)
        send_webhooks(registered, webhook, after)
        assert smtp.received() == [] and receiver.received == []
    with Session(registered) as session:
        held = session.exec(select(WebhookDelivery)).scalars().all()  # type: ignore[call-overload]
        assert held and all(d.last_error == "silenced" for d in held)


def test_the_end_under_a_silence_is_not_told_when_the_run_comes_after_it(
    ingest: Ingest, registered: Engine, sink: tuple[Sink, Mailer]
) -> None:
    smtp, mailer = sink
    subscribe(registered, "tech-upm", "technician", "t1@upm.example", "upm", sites=["upm"])
    opened = hot(ingest, registered, -2, -1, 0)
    run(registered, mailer, opened)
    assert len(smtp.received()) == 1
    with Session(registered) as session:
        silences.create(
            session,
            site="upm",
            room=None,
            device=DEVICE,
            reason="planned power cut",
            by="ops-a",
            starts_at=T + timedelta(minutes=1),
            ends_at=T + timedelta(minutes=30),
            now=T + timedelta(minutes=1),
        )
        alert_id = the_alert(registered).id
        assert alert_id is not None
        actions.resolve_by_hand(
            session,
            alert_id,
            ResolveIn(by="tech-upm", note="under the power cut"),
            T + timedelta(minutes=10),
            notify=False,
        )
    # The next run comes only after the silence ended (the controller was down meanwhile).
    assert run(registered, mailer, T + timedelta(hours=2)) == 0
    assert the_alert(registered).resolve_noticed_at == T + timedelta(hours=2)
    assert len(smtp.received()) == 1


def test_message_pending_at_a_restart_is_sent_once(
    tmp_path: Path, broker: object, db_url: str
) -> None:
    port = free_port()
    stack = Stack(tmp_path, broker.url, broker.topic_root, db_url)  # type: ignore[attr-defined]
    env = {
        "FLEET_SMTP_HOST": "127.0.0.1",
        "FLEET_SMTP_PORT": str(port),
        "FLEET_NOTICE_TICK_S": "0.5",
        "FLEET_PUBLIC_URL": PUBLIC,
    }
    try:
        first = stack.controller(**env)
        engine = make_engine(db_url)
        try:
            request = urllib.request.Request(
                stack.base + "/api/v1/alert-subscriptions",
                data=json.dumps({"email": "ops@fleet.example", "site": "upm"}).encode(),
                headers={
                    "Authorization": f"Bearer {stack.ops_token}",
                    "Content-Type": "application/json",
                },
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 201
            now = datetime.now().astimezone()
            with Session(engine) as session:
                alert = Alert(
                    kind="lamp_hours",
                    severity="warning",
                    state="open",
                    subject=f"device:{DEVICE}",
                    site_code="upm",
                    device_id=DEVICE,
                    message="lamp at 95 % of its life: order a replacement",
                    opened_at=now,
                    updated_at=now,
                )
                session.add(alert)
                session.commit()

            def tried() -> bool:
                with Session(engine) as session:
                    row = session.exec(select(EmailDelivery)).scalars().first()  # type: ignore[call-overload]
                    return row is not None and row.attempts >= 1

            wait_for(tried, 30, "a first failed attempt (no SMTP server yet)")
            first.stop()
            with running_sink(port) as (smtp, _):
                stack.controller(**env)

                def delivered() -> bool:
                    with Session(engine) as session:
                        row = session.exec(select(EmailDelivery)).scalars().one()  # type: ignore[call-overload]
                        return row.delivered_at is not None

                wait_for(delivered, 60, "the pending message delivered after the restart")
                with Session(engine) as session:
                    count = session.execute(
                        select(func.count()).select_from(EmailDelivery)
                    ).scalar()
                assert count == 1
                assert [r for r, _ in smtp.received()] == [["ops@fleet.example"]]
        finally:
            engine.dispose()
    finally:
        stack.stop_all()


def test_vendor_hears_of_its_own_devices_only(
    ingest: Ingest, registered: Engine, sink: tuple[Sink, Mailer]
) -> None:
    smtp, mailer = sink
    with Session(registered) as session:
        device = session.get(Device, DEVICE)
        assert device is not None
        make = device.vendor
    subscribe(registered, "vendor-own", "vendor", "own@vendor.example", None, vendor=make.upper())
    subscribe(registered, "vendor-else", "vendor", "else@vendor.example", None, vendor="Other")
    opened = hot(ingest, registered, -2, -1, 0)
    run(registered, mailer, opened)
    assert [r for r, _ in smtp.received()] == [["own@vendor.example"]]


def test_a_muted_sites_alerts_do_not_hold_up_another_sites_new_one(
    registered: Engine, sink: tuple[Sink, Mailer], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.alerts import notices

    smtp, mailer = sink
    monkeypatch.setattr(notices, "BATCH", 2)  # fewer than the muted site's alerts
    subscribe(registered, "ops-a", "ops", "ops@fleet.example", None)
    with Session(registered) as session:
        silences.create(
            session,
            site="usthb",
            room=None,
            device=None,
            reason="planned power cut",
            by="ops-a",
            starts_at=T - timedelta(hours=1),
            ends_at=T + timedelta(hours=4),
            now=T - timedelta(hours=1),
        )
        for n, (site, kind) in enumerate(
            [
                ("usthb", "site_offline"),
                ("usthb", "programme_overdue"),
                ("usthb", "lamp_hours"),
                ("upm", "site_offline"),
            ]
        ):
            session.add(
                Alert(
                    kind=kind,
                    severity="critical",
                    state="open",
                    subject=f"site:{site}",
                    site_code=site,
                    message=f"alert {n}",
                    opened_at=T,
                    updated_at=T,
                )
            )
        session.commit()
    for seconds in range(4):
        run(registered, mailer, T + timedelta(seconds=seconds))
    [message] = smtp.to("ops@fleet.example")
    assert "upm" in message["Subject"]


def test_the_notice_job_finds_resolved_alerts_not_yet_told_by_index(registered: Engine) -> None:
    # Resolved alerts grow without end; each run looks for the few not yet told of their end,
    # through the partial index, never through all of them.
    alerts = Alert.__table__  # type: ignore[attr-defined]
    rows = [
        {
            "kind": "overheat",
            "severity": "warning",
            "state": "resolved",
            "subject": f"device:{DEVICE}",
            "site_code": "upm",
            "message": "hot",
            "opened_at": T,
            "updated_at": T,
            "resolved_at": T,
            "notice_level": 1,
            "resolve_noticed_at": T if n else None,
        }
        for n in range(5000)
    ]
    with registered.begin() as conn:
        conn.execute(alerts.insert(), rows)
        conn.exec_driver_sql("ANALYZE")
        query = resolved_untold().compile(registered, compile_kwargs={"literal_binds": True})
        plan = " ".join(
            str(r)
            for r in conn.exec_driver_sql(
                f"EXPLAIN {'' if registered.dialect.name == 'postgresql' else 'QUERY PLAN '}{query}"
            )
        )
        assert [r["id"] for r in conn.execute(resolved_untold()).mappings()] != []
    assert "ix_alert_resolve_untold" in plan, plan
