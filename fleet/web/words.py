"""The words the pages show for the product's codes: device states, alert kinds and severities,
power states, reading fields and device metrics, each a msgid of the catalogs
(`fleet/web/locale`). A code not listed (a metric a new profile adds) is made readable from its
name rather than shown raw.
"""

from __future__ import annotations

import gettext
import math
import re
from datetime import date, timedelta

from babel.core import Locale, UnknownLocaleError
from babel.dates import format_date, format_timedelta
from babel.numbers import format_decimal, format_percent

from fleet.programme.timeline import TimelineWords


def N_(message: str) -> str:  # the name Babel's extractor looks for
    """Marks a msgid for the catalogs; translated where it is shown."""
    return message


ROLES = {"ops": N_("ops"), "technician": N_("technician"), "vendor": N_("vendor")}
USER_STATES = {"active": N_("active"), "revoked": N_("revoked")}
STATES = {
    "online": N_("online"),
    "standby": N_("standby"),
    "faulty": N_("faulty"),
    "unreachable": N_("unreachable"),
    "site_offline": N_("site offline"),
    "unknown": N_("unknown"),
}
ALERT_KINDS = {
    "device_unreachable": N_("device unreachable"),
    "site_offline": N_("site offline"),
    "over_temperature": N_("over temperature"),
    "lamp_hours": N_("lamp near end of life"),
    "filter_hours": N_("filter due"),
    "device_error": N_("device error"),
    "left_on_after_hours": N_("left on after hours"),
    "firmware_below_minimum": N_("firmware below minimum"),
    "programme_overdue": N_("programme overdue"),
}
SEVERITIES = {"critical": N_("critical"), "warning": N_("warning")}
ALERT_STATES = {
    "open": N_("open"),
    "acknowledged": N_("acknowledged"),
    "resolved": N_("resolved"),
    "active": N_("open or acknowledged"),
}
POWER = {
    "on": N_("on"),
    "standby": N_("standby"),
    "off": N_("off"),
    "warming": N_("warming up"),
    "cooling": N_("cooling down"),
    "unknown": N_("unknown"),
    "unreachable": N_("unreachable"),
}
AGENT_STATES = {"online": N_("online"), "offline": N_("offline")}
# Reading fields (fleet.protocol.messages.Reading) and the metrics profiles and collectors add.
FIELDS = {
    "ts": N_("Read at"),
    "reachable": N_("Reachable"),
    "power": N_("Power"),
    "input": N_("Input"),
    "temperature_c": N_("Temperature (°C)"),
    "lamp_hours": N_("Lamp hours"),
    "filter_hours": N_("Filter hours"),
    "uptime_s": N_("Uptime"),
    "firmware": N_("Firmware"),
    "error": N_("Error"),
    "collectors": N_("Read by"),
    "fan": N_("Fan"),
    "lamp": N_("Lamp"),
    "temperature": N_("Temperature"),
    "cover": N_("Cover"),
    "filter": N_("Filter"),
    "other": N_("Other"),
    "sys_name": N_("Device name (sysName)"),
    "sys_descr": N_("Description (sysDescr)"),
    "sys_location": N_("Location (sysLocation)"),
    "update_status": N_("Firmware update status"),
    "brightness_pct": N_("Brightness (%)"),
    "pjlink_class": N_("PJLink class"),
    "pjlink_busy": N_("PJLink busy"),
    "serial": N_("Serial number"),
    "name": N_("Name (PJLink)"),
    "manufacturer": N_("Manufacturer (PJLink)"),
    "product": N_("Product (PJLink)"),
    "info": N_("Information (PJLink)"),
    "cleaned": N_("Cleaned by the agent"),
}
# A power or input command (fleet.commands.models.DeviceCommand): its kind and state.
COMMAND_KINDS = {"power": N_("power"), "input": N_("input")}
COMMAND_STATES = {
    "sent": N_("sent"),
    "done": N_("done"),
    "failed": N_("failed"),
    "expired": N_("expired"),
    # A power schedule in notify_only mode: what it would have done, noted, nothing sent.
    "notified": N_("notified"),
}
# The rollout page's buttons (fleet/web/templates/_rollouts.html).
ROLLOUT_MOVES = {"start": N_("Start"), "pause": N_("Pause"), "resume": N_("Resume")}
# The installation programme's milestones (fleet.protocol.site_config.Milestone); the API keeps
# the codes.
MILESTONES = {
    "agreement_signed": N_("agreement signed"),
    "equipment_delivered": N_("equipment delivered"),
    "installed": N_("installed"),
    "training_done": N_("training done"),
    "in_use": N_("in use"),
}
FLAGS = {"ok": N_("ok"), "warning": N_("warning"), "error": N_("error")}
_UNITS = (("_pct", " (%)"), ("_c", " (°C)"), ("_s", " (s)"), ("_hours", " (h)"))


def readable(code: str) -> str:
    """A code no table names, made readable: `lamp2_hours` → "Lamp2 (h)"."""
    text = str(code)
    unit = ""
    for suffix, shown in _UNITS:
        if text.endswith(suffix) and len(text) > len(suffix):
            text, unit = text[: -len(suffix)], shown
            break
    text = re.sub(r"[_\s]+", " ", text).strip()
    return (text[:1].upper() + text[1:] + unit) if text else str(code)


def word(t: gettext.NullTranslations, table: dict[str, str], code: str | None) -> str:
    """The code's word in the page's language; an unlisted code made readable, untranslated."""
    if code is None:
        return "—"
    if code in table:
        return t.gettext(table[code])
    return readable(code)


def milestone_text(
    t: gettext.NullTranslations, milestone: str, phase: int, room: str | None = None
) -> str:
    """A milestone with where it stands, in the page's language: "training done (phase 1)",
    "installed (phase 2, B-101)"; `room` None or empty: the phase's own milestone."""
    shown = word(t, MILESTONES, milestone)
    if room:
        return t.gettext("%(milestone)s (phase %(phase)s, %(room)s)") % {
            "milestone": shown,
            "phase": phase,
            "room": room,
        }
    return t.gettext("%(milestone)s (phase %(phase)s)") % {"milestone": shown, "phase": phase}


def timeline_words(t: gettext.NullTranslations) -> TimelineWords:
    """The programme timeline's words (fleet.programme.timeline) in the page's language."""
    return TimelineWords(
        milestones={code: t.gettext(text) for code, text in MILESTONES.items()},
        phase=t.gettext(N_("phase %(phase)s")),
        phase_room=t.gettext(N_("phase %(phase)s · %(room)s")),
        title=t.gettext(N_("%(site)s: programme, planned against actual (as of %(today)s)")),
        planned=t.gettext(N_("%(milestone)s planned %(day)s")),
        planned_late=t.gettext(N_("%(milestone)s planned %(day)s (late)")),
        happened=t.gettext(N_("%(milestone)s %(day)s")),
        happened_span=t.gettext(N_("%(milestone)s %(day)s to %(end)s")),
        undated=t.gettext(N_("reached, date not given: %(milestones)s")),
        today=t.gettext(N_("today")),
        legend=t.gettext(
            N_("filled: happened · hollow diamond: planned · red: planned date passed")
        ),
    )


# A device's state reason as fleet.devices.state words it (stored in English, the API's), each
# pattern with the msgid the pages say it with; a reason no pattern knows is shown as stored.
REASONS = (
    (re.compile(r"never heard"), N_("never heard")),
    (re.compile(r"reachable, power (?P<power>[a-z]+)"), N_("reachable, power %(power)s")),
    (re.compile(r"reachable, power not reported"), N_("reachable, power not reported")),
    (
        re.compile(r"(?P<power>standby|power [a-z]+) during class hours"),
        N_("%(power)s during class hours"),
    ),
    (
        re.compile(r"(?P<power>standby|power [a-z]+) outside class hours \(expected\)"),
        N_("%(power)s outside class hours (expected)"),
    ),
    (
        re.compile(
            r"no answer outside class hours: taken as switched off \(expected\) \((?P<why>.*)\)"
        ),
        N_("no answer outside class hours: taken as switched off (expected) (%(why)s)"),
    ),
    (
        re.compile(r"cannot reach (?P<device>\S+): (?P<why>.*)"),
        N_("cannot reach %(device)s: %(why)s"),
    ),
    (re.compile(r"error flags: (?P<flags>.*)"), N_("error flags: %(flags)s")),
    # fleet.devices.state.site_offline_reason: every device of a site that is offline.
    (
        re.compile(
            r"site agent (?P<agent>\S+) silent for (?P<minutes>\d+) min "
            r"\(last heard at (?P<at>[^()]*)\)"
        ),
        N_("site agent %(agent)s silent for %(duration)s (last heard at %(at)s)"),
    ),
    (
        re.compile(
            r"site agent (?P<agent>\S+) offline since (?P<at>[^()]*) "
            r"\(will fired or it said offline\)"
        ),
        N_("site agent %(agent)s offline since %(at)s (its link dropped, or it said it stopped)"),
    ),
)
_REASON_TAIL = re.compile(
    r"^(?P<head>.*?)(?:, input (?P<input>[^;]*))?(?:; warnings: (?P<warnings>.*))?$"
)


def duration_text(span: timedelta, lang: str) -> str:
    """A span in the language's words, as Babel's CLDR data writes it: "3 minutes",
    "3 минуты", "2 hours" (rounded to its largest unit from 1.5 of it: 90 min stays
    "90 minutes"). A language Babel does not know: English."""
    try:
        locale = Locale.parse(lang)
    except (UnknownLocaleError, ValueError):
        locale = Locale.parse("en")
    return format_timedelta(span, threshold=1.5, locale=locale)


def reason_text(t: gettext.NullTranslations, reason: str | None, lang: str = "en") -> str:
    """A stored state reason in the page's language (`lang` for the durations in it):
    "reachable, power on, input HDMI1" -> "joignable, alimentation allumée, entrée HDMI1";
    "site agent a-1 silent for 3 min (...)" -> "... silencieux depuis 3 minutes (...)".
    Unknown wording: as stored."""
    if not reason:
        return reason or ""
    tail = _REASON_TAIL.match(reason)
    head = tail.group("head") if tail else reason
    for pattern, message in REASONS:
        found = pattern.fullmatch(head)
        if found is None:
            continue
        values = dict(found.groupdict())
        if "minutes" in values:
            try:
                minutes = timedelta(minutes=int(values.pop("minutes")))
            except (ValueError, OverflowError):  # thousands of digits: no time a site was silent
                return reason
            values["duration"] = duration_text(minutes, lang)
        if "power" in values:
            power = values["power"]
            state = power.removeprefix("power ")
            shown = t.gettext(POWER[state]) if state in POWER else state  # an unknown: as is
            if power.startswith("power ") and "reachable" not in message:
                shown = t.gettext(N_("power %(state)s")) % {"state": shown}
            values["power"] = shown
        text = t.gettext(message) % values if values else t.gettext(message)
        if tail and tail.group("input"):
            text += t.gettext(N_(", input %(input)s")) % {"input": tail.group("input")}
        if tail and tail.group("warnings"):
            text += t.gettext(N_("; warnings: %(warnings)s")) % {"warnings": tail.group("warnings")}
        return text
    return reason


# An alert's message as the rules word it (fleet.alerts.rules, fleet.programme.overview; stored
# in English, the API's, the webhooks' and the e-mails'), each format with the msgid the pages say
# it with. Anchored: a message only partly like a format is shown as stored. Groups: `device`,
# `profile`, `firmware`... are shown as they are; `*_num` numbers and `share` a percentage in the
# locale's digits; `power` a power word; `minutes` a worded duration; `late` the overdue
# milestones. tests/test_alert_words.py builds each kind's message with the rule code and fails
# when a format here no longer matches it.
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
ALERT_MESSAGES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    (
        "device_unreachable",
        re.compile(
            rf"(?P<device>\S+) unreachable for (?P<for_num>{_NUM}) min, "
            rf"(?P<class_num>{_NUM}) of them in class hours"
        ),
        N_("%(device)s unreachable for %(for_num)s min, %(class_num)s of them in class hours"),
    ),
    (
        "left_on_after_hours",
        re.compile(
            r"(?P<device>\S+) is powered (?P<power>[a-z]+) after hours "
            rf"\(since (?P<time>\d{{2}}:\d{{2}}) (?P<zone>\S+), (?P<grace_num>{_NUM}) min after "
            r"the last class\)"
        ),
        N_(
            "%(device)s is powered %(power)s after hours (since %(time)s %(zone)s, "
            "%(grace_num)s min after the last class)"
        ),
    ),
    (
        "over_temperature",
        re.compile(
            rf"(?P<device>\S+) at (?P<temp_num>{_NUM}|nan|inf|-inf) °C, above its profile's "
            rf"maximum (?P<top_num>{_NUM}) °C \((?P<profile>[^()]*)\)"
        ),
        N_(
            "%(device)s at %(temp_num)s °C, above its profile's maximum %(top_num)s °C "
            "(%(profile)s)"
        ),
    ),
)


def _wear(what: str, action: str, message: str) -> tuple[str, re.Pattern[str], str]:
    # fleet.alerts.rules._wear: `what` is "lamp" or "filter", `action` by its severity.
    return (
        f"{what}_hours",
        re.compile(
            rf"(?P<device>\S+) {what} at (?P<used_num>{_NUM}) h, (?P<share>\d+)% of "
            rf"its (?P<life_num>{_NUM}) h life: {action}"
        ),
        message,
    )


ALERT_MESSAGES += (
    _wear(
        "lamp",
        "replace it now",
        N_(
            "%(device)s lamp at %(used_num)s h, %(share)s of its %(life_num)s h life: "
            "replace it now"
        ),
    ),
    _wear(
        "lamp",
        "order a replacement",
        N_(
            "%(device)s lamp at %(used_num)s h, %(share)s of its %(life_num)s h life: "
            "order a replacement"
        ),
    ),
    _wear(
        "filter",
        "replace it now",
        N_(
            "%(device)s filter at %(used_num)s h, %(share)s of its %(life_num)s h life: "
            "replace it now"
        ),
    ),
    _wear(
        "filter",
        "order a replacement",
        N_(
            "%(device)s filter at %(used_num)s h, %(share)s of its %(life_num)s h life: "
            "order a replacement"
        ),
    ),
)
ALERT_MESSAGES += (
    (
        "device_error",
        re.compile(r"(?P<device>\S+) reports (?P<flags>[^\s=,]+=[a-z]+(?:, [^\s=,]+=[a-z]+)*)"),
        N_("%(device)s reports %(flags)s"),
    ),
    (
        "firmware_below_minimum",
        re.compile(
            r"(?P<device>\S+) runs firmware (?P<firmware>.*), below (?P<profile>\S+)'s minimum "
            r"(?P<minimum>.*): schedule a rollout"
        ),
        N_(
            "%(device)s runs firmware %(firmware)s, below %(profile)s's minimum %(minimum)s: "
            "schedule a rollout"
        ),
    ),
    (
        "programme_overdue",
        re.compile(
            r"past its planned date at (?P<site>\S+) \(today (?P<today_day>\d{4}-\d{2}-\d{2}) "
            r"there\): (?P<late>.+)\. Record the milestone, or move its planned date"
        ),
        N_(
            "past its planned date at %(site)s (today %(today_day)s there): %(late)s. "
            "Record the milestone, or move its planned date"
        ),
    ),
    # The site's reason (fleet.devices.state.site_offline_reason) is its alert's message.
    *(("site_offline", pattern, message) for pattern, message in REASONS[-2:]),
)
_LATE = re.compile(
    r"(?P<site>\S+) phase (?P<phase>\d+)(?: (?P<room>.+?))? (?P<milestone>"
    + "|".join(MILESTONES)
    + r") planned (?P<day>\d{4}-\d{2}-\d{2})"
)
_FLAG = re.compile(r"(?P<part>[^\s=,]+)=(?P<flag>[a-z]+)")


def _number(text: str, lang: str) -> str:
    """A number as the rule wrote it (`:g`), in the locale's digits and separators; one in
    exponent form, or not finite, as written (rounding it would change the value)."""
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value) or "e" in text.lower() or abs(value) >= 1e15:
        return text  # beyond what a float keeps digit for digit: as written
    return format_decimal(value, format="#,##0.######", locale=_locale(lang))


def _locale(lang: str) -> Locale:
    try:
        return Locale.parse(lang)
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en")


def _day(text: str, lang: str) -> str:
    try:
        return format_date(date.fromisoformat(text), format="medium", locale=_locale(lang))
    except ValueError:
        return text


def _late_text(t: gettext.NullTranslations, late: str, lang: str) -> str | None:
    """The overdue milestones ("ugb phase 1 B-101 installed planned 2026-01-05; ..."), each in
    the page's language, or None when one is not worded as overview.overdue_finding does."""
    shown = []
    for item in late.split("; "):
        found = _LATE.fullmatch(item)
        if found is None:
            return None
        what = milestone_text(t, found["milestone"], int(found["phase"]), found["room"])
        day = _day(found["day"], lang)
        shown.append(
            t.gettext(N_("%(milestone)s planned %(day)s")) % {"milestone": what, "day": day}
        )
    return t.gettext(N_("; ")).join(shown)


def alert_kind_of(message: str) -> str | None:
    """The alert kind whose format the stored message matches, or None."""
    for kind, pattern, _message in ALERT_MESSAGES:
        if pattern.fullmatch(message):
            return kind
    return None


def alert_text(t: gettext.NullTranslations, message: str | None, lang: str = "en") -> str:
    """A stored alert message in the page's language (`lang` for its numbers, dates and
    durations): "p-1 unreachable for 95 min, 42 of them in class hours" -> "p-1 injoignable
    depuis 95 min, dont 42 pendant les cours". The UTC times in it are left as stored, for
    the `stamps` filter to write in the site's zone. Unknown wording: as stored. Never raises
    on any text."""
    if not message:
        return message or ""
    for _kind, pattern, msgid in ALERT_MESSAGES:
        found = pattern.fullmatch(message)
        if found is None:
            continue
        try:
            values = _alert_values(t, found, lang)
        except (ValueError, ArithmeticError):  # OverflowError, decimal.InvalidOperation
            return message  # a number no rule writes (dozens of digits): as stored
        return message if values is None else t.gettext(msgid) % values
    return message


def _alert_values(
    t: gettext.NullTranslations, found: re.Match[str], lang: str
) -> dict[str, str] | None:
    """The matched message's values in the page's language, or None when a part of it is not
    worded as its rule does. Raises ValueError or ArithmeticError on a number too long to read."""
    values = {k: v for k, v in found.groupdict().items() if v is not None}
    for name, value in list(values.items()):
        if name.endswith("_num"):
            values[name] = _number(value, lang)
        elif name.endswith("_day"):
            values[name] = _day(value, lang)
    if "minutes" in values:
        values["duration"] = duration_text(timedelta(minutes=int(values.pop("minutes"))), lang)
    if "share" in values:
        values["share"] = format_percent(int(values["share"]) / 100, locale=_locale(lang))
    if "power" in values:
        values["power"] = word(t, POWER, values["power"])
    if "flags" in values:
        # "، " in Arabic: the list's separator is the language's.
        values["flags"] = t.gettext(N_(", ")).join(
            t.gettext(N_("%(part)s: %(flag)s"))
            % {"part": word(t, FIELDS, f["part"]), "flag": word(t, FLAGS, f["flag"])}
            for f in _FLAG.finditer(values["flags"])
        )
    if "late" in values:
        late = _late_text(t, values["late"], lang)
        if late is None:
            return None
        values["late"] = late
    return values
