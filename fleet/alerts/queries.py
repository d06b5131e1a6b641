"""Read-side questions about alerts that the API and the dashboard share."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet.alerts.models import Alert, AlertState


def open_alerts_by_site(session: Session) -> dict[str, int]:
    """Unresolved (open or acknowledged) alerts per site code; sites without any are absent."""
    query = (
        select(Alert.site_code, func.count())
        .where(col(Alert.state) != AlertState.resolved.value)
        .group_by(col(Alert.site_code))
    )
    return {site: count for site, count in session.exec(query)}
