"""The controller's word to a site: a `cancel` command, published retained on the site's cmd
topic, listing what the controller has revoked there (the campaigns of cancelled rollouts,
each `rollout-<id>`). Its `issued_at` is the controller's clock.

A site agent starts a command only once it holds a word issued after that command and
received since its subscription was last acknowledged (agent/commands.py): the retained one
the broker hands over on every (re)connect is the latest, whatever the broker had queued
before it. The tick sends the word to every site with an update in flight before it sends
its own commands, so a command starts at the next tick's word, and a rollout cancelled in
between never starts it. A revocation stays in the word for REVOKED_FOR: longer than any
command lives (its expiry is at most the device timeout's cap, 30 days).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from fleet.protocol.commands import MAX_REVOKED, CancelArgs, campaign_of_rollout
from fleet.protocol.messages import Command, CommandKind, Topics
from fleet.rollouts.models import Rollout, RolloutDevice
from fleet.rollouts.plan import FINAL, IN_FLIGHT, RolloutState

log = logging.getLogger(__name__)

REVOKED_FOR = timedelta(days=31)
Publish = Callable[[str, bytes], None]


@dataclass(frozen=True)
class SiteWord:
    """The cancel command (the controller's word) to publish retained to one site."""

    site: str
    command: Command


def unsettled_ended(session: Session) -> list[Rollout]:
    """Aborted (cancelled) rollouts with a device not yet in a final state."""
    final = [s.value for s in FINAL]
    open_ids = select(RolloutDevice.rollout_id).where(col(RolloutDevice.state).not_in(final))
    query = select(Rollout).where(
        Rollout.state == RolloutState.aborted.value, col(Rollout.id).in_(open_ids)
    )
    return list(session.exec(query))


def word_for(session: Session, site: str, now: datetime) -> Command:
    """The site's word at `now`: the campaigns revoked there lately, newest first."""
    rows = session.exec(
        select(Rollout.id)
        .where(
            Rollout.state == RolloutState.aborted.value,
            col(Rollout.finished_at) >= now - REVOKED_FOR,
            col(Rollout.id).in_(
                select(RolloutDevice.rollout_id).where(RolloutDevice.site_code == site)
            ),
        )
        .order_by(col(Rollout.id).desc())
        .limit(MAX_REVOKED)
    ).all()
    args = CancelArgs(campaigns=[campaign_of_rollout(r) for r in rows if r is not None])
    return Command(
        cmd_id=f"word-{site}-{int(now.timestamp() * 1000)}",
        kind=CommandKind.cancel,
        site=site,
        issued_at=now,
        args=args.model_dump(),
    )


def words_due(session: Session, now: datetime) -> list[SiteWord]:
    """A word for each site with an update the agent pushes in flight (sent, downloading,
    installing); one a vendor's cloud or a technician installs needs none."""
    flying = [s.value for s in IN_FLIGHT]
    sites = session.exec(
        select(RolloutDevice.site_code)
        .where(col(RolloutDevice.state).in_(flying), RolloutDevice.method == "agent")
        .distinct()
    ).all()
    return [SiteWord(site, word_for(session, site, now)) for site in sorted(sites)]


def publish_words(publish: Publish, topic_root: str, words: list[SiteWord]) -> None:
    """Publish each word retained; one that cannot be published is tried at the next tick
    (the agents meanwhile hold their commands: nothing starts unconfirmed)."""
    topics = Topics(topic_root)
    for word in words:
        try:
            publish(topics.cmd(word.site), word.command.to_json())
        except Exception as exc:
            log.warning("could not publish the word to %s (%s); next tick", word.site, exc)
