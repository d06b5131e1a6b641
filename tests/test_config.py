"""Site configs and firmware profiles: what ships loads, and every mistake is named with the
file, the key and the fix."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.protocol import documents
from fleet.protocol.errors import ConfigErrors
from fleet.protocol.messages import MAX_BATCH_BYTES
from fleet.protocol.profiles import load_profiles
from fleet.protocol.site_config import (
    DEFAULT_PROFILES_DIR,
    DEFAULT_SITES_DIR,
    MAX_BATCH_SIZE,
    TYPICAL_READING_BYTES,
    load_site,
    load_sites,
)
from fleet.protocol.timetable import Timetable
from fleet.protocol.zones import UnknownZone, zone_named

SITES_MD_SITES = {"upm", "tribhuvan", "tuit", "ugb", "usthb"}


def test_every_shipped_config_and_profile_loads() -> None:
    sites = load_sites()
    codes = {s.config.code for s in sites}
    assert codes >= SITES_MD_SITES
    dazzleview = [s for s in sites if s.config.site.vendor == "Dazzleview"]
    assert len(dazzleview) >= 2
    profiles = load_profiles(DEFAULT_PROFILES_DIR)
    for wanted in (
        "seewo-panel",
        "maxhub-panel",
        "dazzleview-panel",
        "weidong-panel",
        "snmp-projector",
        "mib2-device",
    ):
        assert wanted in profiles
    for site in sites:
        assert site.config.illustrative, f"{site.path} must say what in it is illustrative"


def test_sites_carry_the_source_facts() -> None:
    by_code = {s.config.code: s.config for s in load_sites()}
    assert by_code["upm"].site.timezone == "Asia/Kuala_Lumpur"
    assert by_code["upm"].site.vendor == "Seewo"
    assert by_code["tribhuvan"].site.timezone == "Asia/Kathmandu"
    assert by_code["ugb"].site.vendor == "Weidong"
    assert by_code["usthb"].site.vendor == "MAXHUB"
    assert by_code["tuit"].site.vendor == "not stated"


def write(tmp_path: Path, name: str, data: object) -> Path:
    sites = tmp_path / "site_configs"
    sites.mkdir(exist_ok=True)
    path = sites / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def upm() -> dict:  # type: ignore[type-arg]
    data = yaml.safe_load((DEFAULT_SITES_DIR / "upm.yaml").read_text())
    assert isinstance(data, dict)
    return data


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_site(path, DEFAULT_PROFILES_DIR)
    return [str(e) for e in caught.value.errors]


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("site.name", lambda d: d["site"].update(name="Universiti\x00Putra")),
        ("site.institution", lambda d: d["site"].update(institution="UPM\x1b[2J")),
        ("site.vendor", lambda d: d["site"].update(vendor="Seewo\x9b")),
        ("rooms[0].name", lambda d: d["rooms"][0].update(name="Smart\x07Classroom")),
        ("rooms[0].devices[0].name", lambda d: d["rooms"][0]["devices"][0].update(name="\x7f")),
        (
            "programme[0].milestones[1].note",
            lambda d: d["programme"][0]["milestones"][1].update(note="\x00"),
        ),
    ],
)
def test_text_with_a_control_character_is_named_with_its_fix(
    tmp_path: Path, where: str, change: Any
) -> None:
    """YAML writes control characters as escapes ("\\x00", "\\e"): a NUL in a site's name
    stopped the controller on PostgreSQL, whose text cannot hold one, and an escape rewrote
    the terminal of whoever printed it. Each is refused where it is, once, with its fix."""
    data = upm()
    change(data)
    [message] = errors_of(write(tmp_path, "upm.yaml", data))
    assert f"{where}: the text holds control character U+" in message, message
    assert ".. Fix" not in message and "Fix: remove it" in message


def test_tabs_and_line_breaks_are_text() -> None:
    data = upm()
    data["illustrative"] = "one line\nthe next\tand a tab\r\n"
    data["rooms"][0]["name"] = "Smart\tClassroom"
    assert load_site(write(Path(tempfile.mkdtemp()), "upm.yaml", data), DEFAULT_PROFILES_DIR)


@pytest.mark.parametrize(
    "zone", ["Europe", "x" * 300, "zone.tab", "/etc/localtime", "Asia/Kuala Lumpur", "Mars/Base"]
)
def test_a_timezone_that_is_not_one_is_named_with_its_fix(tmp_path: Path, zone: str) -> None:
    """A directory of tzdata (`Europe`) or a name too long for the file system made zoneinfo
    raise OSError, a traceback rather than the config's error."""
    data = upm()
    data["site"]["timezone"] = zone
    [message] = errors_of(write(tmp_path, "upm.yaml", data))
    assert "site.timezone" in message and "IANA timezone" in message and "Fix:" in message


@given(name=st.one_of(st.text(max_size=300), st.sampled_from(sorted(available_timezones()))))
def test_any_text_is_a_zone_or_an_unknown_zone(name: str) -> None:
    try:
        zone = zone_named(name)
    except UnknownZone as exc:
        assert isinstance(exc, ValueError) and "is not an IANA time zone" in str(exc)
    else:
        assert isinstance(zone, ZoneInfo) and zone.key == name


def test_unknown_profile_names_file_key_and_choices(tmp_path: Path) -> None:
    data = upm()
    data["rooms"][0]["devices"][1]["profile"] = "seewo-panl"
    path = write(tmp_path, "upm.yaml", data)
    [message] = errors_of(path)
    assert message.startswith(f"{path}: rooms[0].devices[1].profile: unknown firmware profile")
    assert "Fix: use one of:" in message and "seewo-panel" in message


def test_misspelt_key_and_bad_timezone_are_both_reported(tmp_path: Path) -> None:
    data = upm()
    data["site"]["timezone"] = "Asia/Kuala Lumpur"
    data["rooms"][0]["devicez"] = []
    messages = errors_of(write(tmp_path, "upm.yaml", data))
    assert any("site.timezone" in m and "IANA timezone" in m for m in messages)
    assert any("rooms[0].devicez" in m and "remove this key" in m for m in messages)


def test_batch_size_the_byte_cap_cannot_carry_is_refused_with_the_largest_that_fits(
    tmp_path: Path,
) -> None:
    # The field's example: 1,000 readings of ~350 bytes are ~350 KB, over the broker's
    # limit and the controller's 256 KiB.
    data = upm()
    data["agent"]["batch_size"] = 1000
    path = write(tmp_path, "upm.yaml", data)
    [message] = errors_of(path)
    assert message.startswith(f"{path}: agent.batch_size: a batch of 1000 readings")
    assert f"over the {MAX_BATCH_BYTES:,} bytes a health batch may carry" in message
    assert message.endswith(f"Fix: set batch_size to at most {MAX_BATCH_SIZE}")
    # The largest it names loads, and fits the cap at the measured size of a reading.
    data["agent"]["batch_size"] = MAX_BATCH_SIZE
    assert load_site(write(tmp_path, "upm.yaml", data)).config.agent.batch_size == MAX_BATCH_SIZE
    assert MAX_BATCH_SIZE * TYPICAL_READING_BYTES <= MAX_BATCH_BYTES


def test_duplicate_device_and_address(tmp_path: Path) -> None:
    data = upm()
    devices = data["rooms"][0]["devices"]
    devices.append(dict(devices[0]))
    messages = errors_of(write(tmp_path, "upm.yaml", data))
    assert any("listed twice" in m for m in messages)
    assert any("is also device" in m for m in messages)


def test_bad_class_period_says_how_to_write_it(tmp_path: Path) -> None:
    data = upm()
    data["timetable"]["weekly"]["mon"] = ["10:00-08:00"]
    [message] = errors_of(write(tmp_path, "upm.yaml", data))
    assert "timetable.weekly" in message and "HH:MM-HH:MM" in message


def test_broken_yaml_gives_line_not_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "upm.yaml", "site:\n  code: upm\n  name: [unclosed\n")
    [message] = errors_of(path)
    assert "not valid YAML at line" in message and "Fix:" in message


def _pure(text: str) -> tuple[str, object]:
    """What PyYAML's pure-Python safe loader makes of `text`: its data, or that it failed."""
    try:
        return "data", yaml.load(text, Loader=yaml.SafeLoader)
    except Exception:
        return "error", None


# YAML's own syntax, whitespace, control and non-BMP characters, dates that do not exist, deep
# nesting, and good site-config lines.
YAMLISH = st.lists(
    st.one_of(
        st.sampled_from(
            [
                ": ",
                "- ",
                "\n",
                "\t",
                "  ",
                "'",
                '"',
                "[",
                "]",
                "{",
                "}",
                "#",
                "&a",
                "*a",
                "!!str ",
                "!!timestamp ",
                "!!binary ",
                "---",
                "...",
                "|",
                ">",
                "? ",
                "%YAML 1.1",
                "\x00",
                "\x1b",
                "\ud7ff",
                "\U0001f600",
                "site:\n  code: upm\n",
                "rooms:\n  - id: r1\n",
                "planned: ",
                "1e309",
                "0x1F",
                "2026-13-40",
                "2026-02-30",
                "2026-01-01 25:00:00",
                "0000-01-01",
                "yes",
                "~",
                "<<: *a",
                "[" * 1000,
            ]
        ),
        st.text(max_size=8),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=YAMLISH)
def test_any_text_is_read_as_pyyaml_reads_it_or_refused_as_yaml(text: str) -> None:
    """Documents are read by documents.parse_yaml (libyaml's parser, for speed): any text,
    hostile included, gives a YAML error or data, never another exception (PyYAML's own
    loader raises ValueError for `2026-13-40`, AttributeError for `!!timestamp x`,
    RecursionError for deep nesting); and where PyYAML's pure-Python safe loader reads data
    too, the same data. (The two parsers differ at a few edges, each refusing some text the
    other reads, such as `&a<tab>` or 1,000 nested brackets, and they read byte order marks
    after the first differently: left out here, and the first, as Windows' Notepad writes
    it, has its own test.)"""
    assert issubclass(documents.DocumentLoader, yaml.CSafeLoader)  # PyYAML's wheels: libyaml
    try:
        ours: tuple[str, object] = "data", documents.parse_yaml(text)
    except yaml.YAMLError:
        ours = "error", None
    pure = _pure(text)
    if ours[0] == "data" and pure[0] == "data":
        assert ours == pure


def test_a_site_config_saved_in_latin1_names_its_line(tmp_path: Path) -> None:
    """A French technician's editor saving Windows-1252: `Université` is not UTF-8. Named with
    its line and the fix, not a UnicodeDecodeError traceback."""
    text = (DEFAULT_SITES_DIR / "upm.yaml").read_text(encoding="utf-8")
    text = text.replace("name: Universiti Putra Malaysia", "name: Université Putra Malaysia")
    line = text.splitlines().index("  name: Université Putra Malaysia") + 1
    path = write(tmp_path, "upm.yaml", "")
    path.write_bytes(text.encode("cp1252"))
    [message] = errors_of(path)
    assert (
        f"line {line} is not UTF-8 (byte 0xe9)" in message and "save the file as UTF-8" in message
    )


def test_a_site_config_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    text = (DEFAULT_SITES_DIR / "upm.yaml").read_text(encoding="utf-8")
    sites = tmp_path / "site_configs"
    sites.mkdir()
    (sites / "upm.yaml").write_text("\ufeff" + text, encoding="utf-8")
    assert load_site(sites / "upm.yaml", DEFAULT_PROFILES_DIR).config.code == "upm"


@pytest.mark.parametrize(
    ("value", "line"),
    [("2026-13-40", 4), ("2026-02-30", 4), ("2026-01-01 25:00:00", 4), ("[" * 5000, 4)],
)
def test_an_impossible_date_or_deep_nesting_names_its_line(
    tmp_path: Path, value: str, line: int
) -> None:
    """A site config's milestone date that does not exist is a ConfigError at its line, not a
    traceback: PyYAML raises a bare ValueError for it."""
    path = write(tmp_path, "upm.yaml", f"site:\n  code: upm\nprogramme:\n  - planned: {value}\n")
    [message] = errors_of(path)
    assert f"not valid YAML at line {line}" in message and "Fix:" in message, message


def test_file_name_must_match_site_code(tmp_path: Path) -> None:
    [message] = errors_of(write(tmp_path, "upm-old.yaml", upm()))
    assert "site.code" in message and "differs from the file name" in message


def test_profile_under_a_real_enterprise_number_is_refused(tmp_path: Path) -> None:
    profiles = tmp_path / "firmware_profiles"
    profiles.mkdir()
    data = yaml.safe_load((DEFAULT_PROFILES_DIR / "seewo-panel.yaml").read_text())
    data["snmp"]["objects"][2]["oid"] = "1.3.6.1.4.1.9.9.1.0"
    (profiles / "seewo-panel.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigErrors) as caught:
        load_profiles(profiles)
    [error] = caught.value.errors
    assert error.key == "snmp.objects[2]"
    assert "1.3.6.1.4.1.32473" in error.fix


def test_profile_field_must_be_a_reading_field(tmp_path: Path) -> None:
    profiles = tmp_path / "firmware_profiles"
    profiles.mkdir()
    data = yaml.safe_load((DEFAULT_PROFILES_DIR / "mib2-device.yaml").read_text())
    data["snmp"]["objects"][0]["field"] = "temprature_c"
    (profiles / "mib2-device.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigErrors) as caught:
        load_profiles(profiles)
    [error] = caught.value.errors
    assert error.key == "snmp.objects[0].field"
    assert "temperature_c" in error.fix


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("snmp.objects[0].scale", float("nan")),  # YAML's .nan
        ("snmp.objects[0].scale", float("inf")),
        ("thresholds.temperature_c_max", float("nan")),
        ("thresholds.lamp_hours_life", float("-inf")),
    ],
)
def test_a_profile_number_that_is_not_finite_is_named(
    tmp_path: Path, key: str, value: float
) -> None:
    """A NaN scale made every reading of the model one the controller refuses; a NaN
    threshold compares false with everything, so its alert could never open."""
    profiles = tmp_path / "firmware_profiles"
    profiles.mkdir()
    data = yaml.safe_load((DEFAULT_PROFILES_DIR / "snmp-projector.yaml").read_text())
    section, _, field = key.partition(".")
    if section == "snmp":
        data["snmp"]["objects"][0]["scale"] = value
    else:
        data.setdefault("thresholds", {})[field] = value
    (profiles / "snmp-projector.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigErrors) as caught:
        load_profiles(profiles)
    assert [e.key for e in caught.value.errors] == [key]
    assert "finite" in str(caught.value.errors[0]), caught.value.errors[0]


def test_a_value_map_with_a_control_character_is_named(tmp_path: Path) -> None:
    """A value map's text (what a device's number reads as) is text of the profile too."""
    profiles = tmp_path / "firmware_profiles"
    profiles.mkdir()
    data = yaml.safe_load((DEFAULT_PROFILES_DIR / "dazzleview-panel.yaml").read_text())
    index, mapped = next((i, o) for i, o in enumerate(data["snmp"]["objects"]) if o.get("map"))
    mapped["map"][next(iter(mapped["map"]))] = "on\x1b[8m"
    (profiles / "dazzleview-panel.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigErrors) as caught:
        load_profiles(profiles)
    [error] = caught.value.errors
    assert error.key == f"snmp.objects[{index}].map" and "U+001B" in error.problem


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda d: d["programme"][0].update(phase=1000), "programme[0].phase"),
        (lambda d: d["programme"][0].update(phase=2**70), "programme[0].phase"),
        (
            lambda d: d["programme"][0]["milestones"][1].update(trained_more_than=2**40),
            "programme[0].milestones[1].trained_more_than",
        ),
    ],
)
def test_a_number_past_its_column_is_named(tmp_path: Path, change: Any, key: str) -> None:
    """A phase number is bounded as the API bounds it (1 to 999: one past could be seeded
    but never named by a path, and one past 64 bits failed the registry sync at the
    controller's start); a head count fits a 32-bit integer."""
    data = upm()
    change(data)
    [message] = errors_of(write(tmp_path, "upm.yaml", data))
    assert message.split(": ")[1] == key, message


def test_timetable_in_site_local_time_kathmandu() -> None:
    kathmandu = ZoneInfo("Asia/Kathmandu")
    timetable = Timetable.model_validate({"weekly": {"mon": ["07:00-09:00"]}})
    # Monday 01:20 UTC is 07:05 in Kathmandu (UTC+05:45): in class.
    assert timetable.in_class(datetime(2024, 10, 7, 1, 20, tzinfo=UTC), kathmandu)
    # 01:10 UTC is 06:55 local: not yet.
    assert not timetable.in_class(datetime(2024, 10, 7, 1, 10, tzinfo=UTC), kathmandu)
    end = timetable.last_class_end(datetime(2024, 10, 7, 6, 0, tzinfo=UTC), kathmandu)
    assert end == datetime(2024, 10, 7, 3, 15, tzinfo=UTC)


def test_timetable_round_trips_through_its_json_form() -> None:
    timetable = Timetable.model_validate({"weekly": {"tue": ["08:00-10:00", "10:30-12:00"]}})
    again = Timetable.model_validate(timetable.model_dump(mode="json"))
    assert again == timetable
