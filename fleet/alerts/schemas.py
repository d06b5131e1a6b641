"""What the alerts API and the alerts page take and return."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fleet.alerts.models import Severity
from fleet.protocol.messages import DEVICE_ID_PATTERN, TEXT_PATTERN, SiteCode
from fleet.time_window import Instant

# An address as RFC 5321 bounds it (local part 64, whole 254), printable ASCII, no spaces: the
# SMTP server is the judge of the rest, and a refused address is recorded on its delivery.
EMAIL_PATTERN = (
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"
)


class AlertOut(BaseModel):
    """One alert as the alerts API and the alerts page show it, history and notice fields
    included."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    severity: str
    state: str
    site_code: str
    device_id: str | None
    message: str
    opened_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    ack_note: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None
    # Accountability beyond ack and resolve: the notice level reached (0 nobody told, 1
    # subscribers, 2 site technicians, 3 ops) and when it escalated; the silence that muted it.
    notice_level: int = 0
    escalated_at: datetime | None = None
    silence_id: int | None = None
    silenced_by: str | None = None
    silenced_at: datetime | None = None


class AlertPage(BaseModel):
    """One page of alerts the caller may see, with the total that match and the cursor of the next
    page."""

    items: list[AlertOut]  # newest first
    total: int  # alerts that match, at the time of this page
    limit: int
    next: str | None  # the cursor of the next page (`after=`); None on the last


class AckIn(BaseModel):
    """The body of an acknowledgement: an optional note (`by` is ignored: the caller is
    recorded)."""

    # Who acknowledged: the authenticated caller, whatever a request says (older clients
    # still send `by`; it is accepted and replaced, so no one can act in another's name).
    by: str | None = Field(default=None, min_length=1, max_length=200, pattern=TEXT_PATTERN)
    note: str = Field(default="", max_length=2000, pattern=TEXT_PATTERN)


class ResolveIn(BaseModel):
    """The body of resolving an alert by hand: the resolution note (`by` is ignored: the caller is
    recorded)."""

    # As AckIn.by: replaced by the authenticated caller.
    by: str | None = Field(default=None, min_length=1, max_length=200, pattern=TEXT_PATTERN)
    note: str = Field(default="resolved by hand", max_length=2000, pattern=TEXT_PATTERN)


class SubscriptionIn(BaseModel):
    """E-mail me alerts of `min_severity` or worse at `site` (None: every site I may see)."""

    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=254, pattern=EMAIL_PATTERN)
    site: SiteCode | None = None
    min_severity: Severity = Severity.warning


class SubscriptionOut(BaseModel):
    """One e-mail subscription to alerts as the API and the subscriptions page show it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    user_name: str
    email: str
    site_code: str | None
    min_severity: str
    created_at: datetime


class SilenceIn(BaseModel):
    """Mute a site, one room of it, or one device, until `ends_at` (from `starts_at`, now if
    not given), for `reason`."""

    model_config = ConfigDict(extra="forbid")

    site: SiteCode
    room: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    device: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)
    reason: str = Field(min_length=1, max_length=500, pattern=TEXT_PATTERN)
    starts_at: Instant | None = None
    ends_at: Instant


class SilenceOut(BaseModel):
    """One silence as the API and the alerts page show it, with who made it and who ended it
    early."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    site_code: str
    room_id: str | None
    device_id: str | None
    reason: str
    created_by: str
    created_at: datetime
    starts_at: datetime
    ends_at: datetime
    expired_at: datetime | None
    expired_by: str | None
