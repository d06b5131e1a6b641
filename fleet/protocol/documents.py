"""How a YAML document (site config or firmware profile) is read: strict models, and errors that
name the file, the line and the fix instead of a traceback."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict

from fleet.protocol.errors import ConfigError, ConfigErrors

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


class Strict(BaseModel):
    """A document section: unknown keys are errors (a misspelt key is never silently ignored),
    and a loaded document is immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def read_yaml(path: Path) -> object:
    """The mapping a YAML file holds. Raises ConfigErrors when the file cannot be read, is not
    YAML (with the line and column), or is not a mapping."""
    try:
        text = path.read_text(encoding="utf-8")
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
        data = yaml.safe_load(text)
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
