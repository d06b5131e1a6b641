"""Errors a technician meets, and how they are worded: what happened, where, and what to do."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError


class ConfigError(Exception):
    """A YAML document (site config or firmware profile) that cannot be used as it is."""

    def __init__(self, path: Path | str, key: str, problem: str, fix: str) -> None:
        """`key` is where in the document (`rooms[0].devices[2].address`; "" for the whole
        file), `problem` what is wrong there, `fix` what the technician should do."""
        self.path = str(path)
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}: {self.key}" if self.key else self.path
        return f"{where}: {self.problem}. Fix: {self.fix}"


def key_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the key a technician finds in the YAML:
    `rooms[0].devices[2].address`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_FIXES = {
    "missing": "add this key",
    "extra_forbidden": "remove this key, or check its spelling",
    "string_pattern_mismatch": "use lowercase letters, digits, '-' or '_'",
    "enum": "use one of the allowed values",
    "literal_error": "use one of the allowed values",
}


def config_errors_from_validation(path: Path | str, exc: ValidationError) -> list[ConfigError]:
    """One ConfigError per problem pydantic found in the document at `path`. The fix is the
    validator's own (the part of its message after " Fix: ") or one chosen by error type."""
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        fix = _FIXES.get(err["type"], "correct the value")
        if err["type"] == "value_error" and " Fix: " in msg:
            msg, fix = msg.split(" Fix: ", 1)
            msg = msg.rstrip(".")  # the sentence's full stop is ConfigError's own
        out.append(ConfigError(path, key_path(loc), msg, fix))
    return out


class ConfigErrors(Exception):
    """Every problem found in one load, so a technician fixes them in one pass."""

    def __init__(self, errors: list[ConfigError]) -> None:
        """The message lists `errors` one per line."""
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))
