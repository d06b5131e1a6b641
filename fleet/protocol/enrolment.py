"""Enrolment's contract: the one-time token's shape and the controller's answer to
`POST /api/v1/enrolment`, which the agent checks whole before any of it touches a path, a file
or the network (`agent/enrol.py`).

Everything in the answer ends up in a file name, an env file the service manager reads, or a
broker login, so each field has a pattern: a site code (never `../`), a broker URL the
contract parses, a user name and password of printable characters only (no newline can add a
line to an env file), secret names of `fleet.protocol.secret_refs`.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleet.protocol.broker_url import BrokerUrlError, parse_mqtt_url
from fleet.protocol.messages import SITE_CODE_PATTERN, describe_validation_error

ENROL_PREFIX = "enrol_"
# 32 random bytes as URL-safe base64: 43 characters.
ENROL_TOKEN_BODY_LENGTH = 43
_BODY_CHARS = re.compile(r"^[A-Za-z0-9_-]*$")
# Printable ASCII without space: what the controller generates (token_urlsafe), and nothing that
# a shell, systemd's EnvironmentFile or a URL could read as syntax.
BROKER_USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
BROKER_PASSWORD_PATTERN = r"^[\x21-\x7e]{12,256}$"  # noqa: S105  (a pattern, no password)
TOPIC_ROOT_PATTERN = r"^[A-Za-z0-9_-]{1,32}(/[A-Za-z0-9_.-]{1,32}){0,7}$"
SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"  # noqa: S105  (a pattern, no secret)
MAX_CONFIG_YAML_CHARS = 4 * 1024 * 1024


def enrol_token_problem(token: str) -> str | None:
    """Why `token` cannot be an enrolment token (what is wrong, and what to do), or None.

    A whole token is `enrol_` and 43 URL-safe base64 characters; a token cut short in a copy
    and paste is told as such, not as a wrong prefix."""
    if not token.startswith(ENROL_PREFIX):
        shown = token[:10] + ("..." if len(token) > 10 else "")
        return (
            f"the enrolment token should start with {ENROL_PREFIX!r} (this one starts "
            f"{shown!r}): copy the token that POST /api/v1/enrolment/tokens gave"
        )
    body = token[len(ENROL_PREFIX) :]
    if not _BODY_CHARS.match(body):
        return (
            "the enrolment token holds characters other than letters, digits, '-' and '_' "
            "(a space or a quote picked up in the copy?): copy it again, whole"
        )
    if len(body) < ENROL_TOKEN_BODY_LENGTH:
        return (
            f"the enrolment token is cut short: {len(body)} of its {ENROL_TOKEN_BODY_LENGTH} "
            f"characters after {ENROL_PREFIX!r}: copy it again, whole"
        )
    if len(body) > ENROL_TOKEN_BODY_LENGTH:
        return (
            f"the enrolment token is too long: {len(body)} characters after {ENROL_PREFIX!r} "
            f"where a token has {ENROL_TOKEN_BODY_LENGTH} (two pasted together?): copy it again"
        )
    return None


class BrokerLogin(BaseModel):
    """The broker credential handed to an enrolled agent."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(max_length=2048)
    username: str = Field(pattern=BROKER_USER_PATTERN)
    password: str = Field(pattern=BROKER_PASSWORD_PATTERN)
    topic_root: str = Field(pattern=TOPIC_ROOT_PATTERN)

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        try:
            address = parse_mqtt_url(value)
        except BrokerUrlError as exc:
            raise ValueError(str(exc)) from None
        if any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
            raise ValueError("a broker URL holds printable ASCII only")
        if address.password:
            raise ValueError("the broker URL carries a password: it belongs in `password`")
        return value


class EnrolmentAnswer(BaseModel):
    """The controller's answer to `POST /api/v1/enrolment`: the site, its config (YAML, with
    `secret:NAME` references), the broker login, and the secrets the config refers to."""

    model_config = ConfigDict(extra="ignore")

    site: str = Field(pattern=SITE_CODE_PATTERN)
    config_yaml: str = Field(min_length=1, max_length=MAX_CONFIG_YAML_CHARS)
    mqtt: BrokerLogin
    secrets_needed: list[str] = Field(default_factory=list, max_length=10_000)

    @field_validator("secrets_needed")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        pattern = re.compile(SECRET_NAME_PATTERN)
        bad = [name for name in value if not pattern.match(name)]
        if bad:
            raise ValueError(f"{bad[0][:40]!r} is not a secret name (letters, digits and _)")
        return value

    def file_names(self) -> tuple[str, str]:
        """The site config's and the env file's names: `<site>.yaml`, `<site>.env`."""
        return f"{self.site}.yaml", f"{self.site}.env"


class EnrolmentAnswerError(ValueError):
    """An enrolment answer off the contract; the message says which field and why."""


def parse_enrolment_answer(data: object) -> EnrolmentAnswer:
    """The answer checked against the contract, or EnrolmentAnswerError naming the field."""
    try:
        return EnrolmentAnswer.model_validate(data)
    except ValidationError as exc:
        raise EnrolmentAnswerError(describe_validation_error(exc)) from None


def inside(directory: Path, name: str) -> Path:
    """`directory / name`, refusing a name that would lead anywhere else (`..`, `/`)."""
    path = directory / name
    if Path(name).name != name or name in ("", ".", "..") or path.parent != directory:
        raise EnrolmentAnswerError(f"{name!r} is not a plain file name")
    return path
