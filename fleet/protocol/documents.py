"""How a YAML document (site config or firmware profile) is read: strict models, and errors that
name the file, the line and the fix instead of a traceback."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

from fleet.protocol.errors import ConfigError, ConfigErrors
from fleet.protocol.messages import control_character_problem

# An SNMP object identifier in dotted form, as profiles write them (e.g. 1.3.6.1.2.1.1.5.0).
OID_PATTERN = r"^1(\.\d+)+$"


def _text_encoding(value: str) -> str:
    try:
        return codecs.lookup(value).name
    except LookupError:
        raise ValueError(
            f"{value!r} is not a text encoding Python knows. Fix: use utf-8, latin-1, "
            "cp1252 or shift_jis, as the device's manual gives it"
        ) from None


# How a device encodes its free text (a projector's NAME, INF2): a codec name, normalised
# (`Latin-1` -> `iso8859-1`). Text that is not in it is read as Latin-1 and said so.
TextEncoding = Annotated[str, AfterValidator(_text_encoding)]


# libyaml's parser where PyYAML was built with it (its wheels are), the pure-Python one where
# not: the same documents in a sixth of the time (a controller or an agent reads every site
# config and profile as it starts), and a nesting limit where the pure-Python one recurses
# until Python stops it.
_SAFE_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DocumentLoader(_SAFE_BASE):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader, whose values its own constructors cannot build are YAML errors at
    their place: PyYAML raises a bare ValueError for a date that does not exist (`2026-13-40`,
    an hour 25) or `!!int abc`, and an AttributeError for `!!timestamp x`, with no place."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> object:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            value = str(node.value)[:40] if isinstance(node, yaml.ScalarNode) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"{value!r} cannot be read as {node.tag} ({exc})", node.start_mark
            ) from None


def parse_yaml(text: str) -> object:
    """The data a YAML text holds, read by the safe loader (no Python objects). Raises
    yaml.YAMLError for anything it cannot read: bad syntax, a date that does not exist,
    nesting too deep; a MarkedYAMLError, with `problem_mark` (0-based line and column), where
    the place is known."""
    try:
        return yaml.load(text, Loader=DocumentLoader)  # noqa: S506 (a safe loader)
    except RecursionError:
        raise yaml.YAMLError("the document nests deeper than it can be read") from None


class Strict(BaseModel):
    """A document section: unknown keys are errors (a misspelt key is never silently ignored),
    text holds no control character, a number is finite (YAML's `.nan` and `.inf` would
    make a scale or a threshold that compares false with everything), and a loaded document
    is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: object) -> object:
        """Every text of a section, alone, in a list or in a mapping (a value map's keys and
        values), without the control characters no message may hold
        (fleet.protocol.messages.CONTROL_CHARACTERS): YAML writes them as `"\\x00"` or
        `"\\e"`, and a NUL in a site's name stopped a controller on PostgreSQL, whose text
        cannot hold one, while an escape rewrote the terminal of whoever ran `fleet-agent
        check`."""
        if isinstance(value, dict):
            texts: list[object] = [*value.keys(), *value.values()]
        else:
            texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for text in texts:
            problem = control_character_problem(text) if isinstance(text, str) else None
            if problem:
                raise ValueError(
                    f"the {problem}. Fix: remove it (text pasted from a terminal or a "
                    "document may carry one)"
                )
        return value


def read_yaml(path: Path) -> object:
    """The mapping a YAML file holds. Raises ConfigErrors when the file cannot be read, is not
    UTF-8 or not YAML (with the line and column), or is not a mapping."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigErrors(
            [
                ConfigError(
                    path,
                    "",
                    f"cannot read the file ({exc.strerror})",
                    "check the path and its permissions",
                )
            ]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # An editor that saved Latin-1 or Windows-1252 (`Université` in a French name).
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigErrors(
            [
                ConfigError(
                    path,
                    "",
                    f"line {line} is not UTF-8 (byte 0x{raw[exc.start]:02x})",
                    "save the file as UTF-8 (any editor's 'Save as' offers it)",
                )
            ]
        ) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigErrors(
            [
                ConfigError(
                    path,
                    "",
                    f"not valid YAML at {where}: {problem}",
                    "fix the YAML syntax there (indentation, a missing ':' or quote)",
                )
            ]
        ) from None
    if not isinstance(data, dict):
        raise ConfigErrors(
            [
                ConfigError(
                    path,
                    "",
                    "the document is not a mapping of keys to values",
                    "start the file with top-level keys such as 'id:' or 'site:'",
                )
            ]
        )
    return data
