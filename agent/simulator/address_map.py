"""Where simulated devices listen: a small JSON file the agent polls them through.

`{"device-id": "127.0.0.1:40123", ...}`. The site configs' addresses are RFC 5737
documentation addresses that must never be sent to; `fleet-agent simulate` writes this map and
the agent reads it to poll the simulated devices instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

Address = tuple[str, int]


def write_address_map(path: Path | str, *maps: Mapping[str, Address]) -> None:
    """Write one or more maps (merged) atomically, so a reader never sees half a file."""
    path = Path(path)
    merged: dict[str, str] = {}
    for address_map in maps:
        merged.update({device: f"{host}:{port}" for device, (host, port) in address_map.items()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_address_map(path: Path | str) -> dict[str, Address]:
    """The map `fleet-agent simulate` wrote: device id to (host, port). Raises ValueError, saying
    what to do, when the file is missing or is not such a map."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{path}: no address map. Fix: start `fleet-agent simulate` first, which writes it"
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not JSON ({exc}). Fix: let `fleet-agent simulate` rewrite it"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f'{path}: not a map. Fix: write {{"device-id": "127.0.0.1:40123"}}')
    out: dict[str, Address] = {}
    for device, where in data.items():
        host, sep, port = str(where).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{path}: {device}: {where!r} is not host:port. Fix: write it like "
                '"127.0.0.1:40123"'
            )
        out[str(device)] = (host, int(port))
    return out
