"""Device secrets (SNMP communities, SNMPv3 keys, PJLink passwords) resolved on the agent.

In a site config or profile, a secret is written as a reference, `secret:NAME`
(`fleet.protocol.secret_refs`). NAME is looked up first in the environment, then in the
agent's secrets file: KEY=VALUE lines (the format of systemd's EnvironmentFile, read by
`agent/env_file.py`, and of the file `fleet-agent enroll` writes), at the path in
FLEET_AGENT_SECRETS_FILE.

Secrets never appear in logs, API output or error messages: errors name the secret, never
its value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.env_file import EnvFileError, read_env_file
from fleet.protocol.secret_refs import NAME_RE, REF_PREFIX, is_reference

SECRETS_FILE_ENV = "FLEET_AGENT_SECRETS_FILE"
__all__ = ["SECRETS_FILE_ENV", "SecretMissing", "Secrets", "read_env_file"]


class SecretMissing(LookupError):
    """A `secret:NAME` reference that neither the environment nor the secrets file answers."""


@dataclass
class Secrets:
    """Where `secret:NAME` references are looked up: `environ` first, then the KEY=VALUE lines of
    `file`, read once, when the environment first lacks a name."""

    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    file: Path | None = None
    _file_values: dict[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_environment(cls) -> Secrets:
        """This process's environment, and the secrets file FLEET_AGENT_SECRETS_FILE names, if
        set."""
        path = os.environ.get(SECRETS_FILE_ENV)
        return cls(file=Path(path) if path else None)

    def resolve(self, value: str | None, what: str) -> str | None:
        """The secret behind `value` (a reference or a literal). `what` names it in errors,
        e.g. "the community of device upm-sc1-panel-1"."""
        if value is None or not is_reference(value):
            return value
        name = value[len(REF_PREFIX) :]
        if not NAME_RE.match(name):
            raise SecretMissing(
                f"{what} refers to {value!r}, which is not a valid secret name: use letters, "
                "digits and _ (e.g. secret:UPM_SNMP_COMMUNITY)"
            )
        if name in self.environ:
            return self.environ[name]
        found = self._from_file().get(name)
        if found is not None:
            return found
        where = (
            f"the secrets file {self.file}" if self.file else f"a secrets file ({SECRETS_FILE_ENV})"
        )
        raise SecretMissing(
            f"{what} is secret {name}, which is set neither in the environment nor in {where}: "
            f"add a line {name}=... there"
        )

    def _from_file(self) -> dict[str, str]:
        if self._file_values is None:
            self._file_values = {}
            if self.file is not None:
                try:
                    self._file_values = read_env_file(self.file)
                except OSError as exc:
                    raise SecretMissing(
                        f"cannot read the secrets file {self.file} ({exc.strerror}): check "
                        f"{SECRETS_FILE_ENV} and the file's permissions"
                    ) from None
                except EnvFileError as exc:
                    raise SecretMissing(f"the secrets file {self.file}: {exc}") from None
        return self._file_values
