"""Read-side questions about rollouts that the API and the rollouts page share: the list, and
one rollout with its devices and the bytes its sites downloaded. Rollouts are ops' business
only (`rollouts:read`), so there is no narrower scope to apply."""

from __future__ import annotations

from sqlmodel import Session, col, select

from fleet.paging import Order, Page, SortKey
from fleet.rollouts.engine import final_counts
from fleet.rollouts.models import ArtifactDownload, Rollout, RolloutDevice
from fleet.rollouts.schemas import RolloutDetailOut, RolloutDeviceOut, RolloutOut, SiteBytesOut


class RolloutNotFound(LookupError):
    """No rollout has that id; the message says where to list them."""

    def __init__(self, rollout_id: int) -> None:
        """`rollout_id`: the id asked for, kept on the error."""
        super().__init__(f"no rollout {rollout_id}: GET /api/v1/rollouts lists them")
        self.rollout_id = rollout_id


def rollout_row(session: Session, rollout_id: int) -> Rollout:
    """The rollout's row. Raises RolloutNotFound."""
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise RolloutNotFound(rollout_id)
    return rollout


def _rows(session: Session, rollout_id: int) -> list[RolloutDevice]:
    query = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
    return list(session.exec(query.order_by(col(RolloutDevice.wave), col(RolloutDevice.device_id))))


def rollout_out(session: Session, rollout: Rollout) -> RolloutOut:
    """The rollout with its devices counted by update state."""
    assert rollout.id is not None
    out = RolloutOut.model_validate(rollout, from_attributes=True)
    out.counts = final_counts(_rows(session, rollout.id))
    return out


# Newest first, by id (a 32-bit column).
ORDER = Order("rollouts", SortKey(col(Rollout.id), "int32", descending=True))


def list_rollouts(
    session: Session, *, limit: int = 100, after: str | None = None
) -> Page[RolloutOut]:
    """The rollouts, newest first: one page of up to `limit` after the cursor `after`, each
    with its devices counted by update state. Raises fleet.paging.BadCursor."""
    query = select(Rollout)
    if after is not None:
        query = query.where(ORDER.after(after))
    rollouts = session.exec(query.order_by(*ORDER.order_by()).limit(limit + 1)).all()
    page = ORDER.page(rollouts, limit, lambda r: (r.id,))
    return Page([rollout_out(session, r) for r in page.items], page.next)


def rollout_detail(session: Session, rollout_id: int) -> RolloutDetailOut:
    """One rollout with its devices (by wave, then id) and, per site, the bytes downloaded of
    its release and its devices updated and targeted. Raises RolloutNotFound."""
    rollout = rollout_row(session, rollout_id)
    rows = _rows(session, rollout_id)
    downloads = session.exec(
        select(ArtifactDownload).where(ArtifactDownload.sha256 == rollout.release_sha256)
    )
    paid = {d.site_code: d.bytes_served for d in downloads}
    sites = sorted({r.site_code for r in rows})
    return RolloutDetailOut(
        **rollout_out(session, rollout).model_dump(),
        devices=[RolloutDeviceOut.model_validate(r, from_attributes=True) for r in rows],
        sites=[
            SiteBytesOut(
                site_code=site,
                bytes_downloaded=paid.get(site, 0),
                devices_updated=sum(r.site_code == site and r.state == "succeeded" for r in rows),
                devices_targeted=sum(r.site_code == site for r in rows),
            )
            for site in sites
        ],
    )
