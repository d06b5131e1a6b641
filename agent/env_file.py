"""Env files in the syntax of systemd's `EnvironmentFile=` (systemd.exec(5)), which a POSIX
shell's `set -a; . FILE` reads the same way: the agent's enrolment writes one, its unit and the
secrets lookup read it.

Written values are always double-quoted, with the four characters a double quote gives a
meaning to (`\\`, `"`, `$`, backquote) escaped by a backslash, as systemd reads them; a value
holding a line break or another control character is refused rather than written, so no
value can add a line (an `LD_PRELOAD=...`) to the file.
"""

from __future__ import annotations

import re
from pathlib import Path

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# In systemd's double quotes (and a shell's) a backslash escapes exactly these.
_ESCAPED = '\\"$`'
# Line breaks of any kind (Python's splitlines() knows more than systemd does) and other control
# characters: none belongs in a URL, a password or a device secret.
_UNWRITABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


class EnvFileError(ValueError):
    """A key or value an env file cannot carry, or a line it cannot read; says which."""


def env_line(key: str, value: str) -> str:
    """`KEY="value"`, escaped for systemd's EnvironmentFile and a shell alike.

    Raises EnvFileError for a key that is not a variable name, or a value holding a line
    break or control character, tab aside (the key is named, the value never: it may be a
    secret)."""
    if not KEY_RE.match(key):
        raise EnvFileError(f"{key[:40]!r} is not a variable name (letters, digits and _)")
    if _UNWRITABLE.search(value):
        raise EnvFileError(f"the value of {key} holds a line break or control character: refused")
    escaped = "".join("\\" + c if c in _ESCAPED else c for c in value)
    return f'{key}="{escaped}"'


def render_env_file(comment: str, values: dict[str, str], trailer: list[str]) -> str:
    """The whole file: `# comment` lines, one quoted line per value, then `trailer`, each
    line a comment or an empty `NAME=` to fill in."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [env_line(key, value) for key, value in values.items()]
    for line in trailer:
        if not (line.startswith("#") or (line.endswith("=") and KEY_RE.match(line[:-1]))):
            raise EnvFileError(f"{line[:40]!r} is neither a comment nor an empty assignment")
        lines.append(line)
    return "\n".join(lines) + "\n"


def parse_env_text(text: str) -> dict[str, str]:
    """KEY=VALUE assignments as systemd's EnvironmentFile reads them: `#` and `;` lines are
    comments; a value is bare (backslash escapes the next character, trailing blanks
    dropped), double-quoted (backslash escapes `\\ " $` and backquote, a backslash-newline
    joins lines, any other backslash stays) or single-quoted (literal); quotes may span lines.
    Raises EnvFileError for a quote left open."""
    values: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        # One assignment per iteration, starting at the beginning of a line.
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            break
        if text[i] in "#;\n":
            i = text.find("\n", i)
            i = n if i < 0 else i + 1
            continue
        eq = text.find("=", i)
        nl = text.find("\n", i)
        if eq < 0 or (0 <= nl < eq):
            i = n if nl < 0 else nl + 1  # systemd skips a line without '='
            continue
        key = text[i:eq].strip()
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        value: list[str] = []
        if i < n and text[i] in "\"'":
            quote = text[i]
            i += 1
            while True:
                if i >= n:
                    raise EnvFileError(f"the value of {key} opens a quote it never closes")
                c = text[i]
                if c == quote:
                    i += 1
                    break
                if quote == '"' and c == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    if nxt in _ESCAPED:
                        value.append(nxt)
                    elif nxt != "\n":
                        value.append(c + nxt)
                    i += 2
                    continue
                value.append(c)
                i += 1
            # Whatever follows the closing quote on its line is ignored, as systemd does.
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        else:
            while i < n and text[i] != "\n":
                c = text[i]
                if c == "\\" and i + 1 < n:
                    if text[i + 1] != "\n":
                        value.append(text[i + 1])
                    i += 2
                    continue
                value.append(c)
                i += 1
            i += 1
            while value and value[-1] in " \t":
                value.pop()
        if KEY_RE.match(key):
            values[key] = "".join(value)
    return values


def read_env_file(path: Path) -> dict[str, str]:
    """The assignments of the env file at `path` (see parse_env_text). Raises OSError when it
    cannot be read, EnvFileError when it cannot be parsed or is not UTF-8 (a file saved by an
    editor in Latin-1 or Windows-1252, say, with an accented letter in a password)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise EnvFileError(
            f"line {line} is not UTF-8 (byte 0x{raw[exc.start]:02x}): save the file as UTF-8"
        ) from None
    return parse_env_text(text)
