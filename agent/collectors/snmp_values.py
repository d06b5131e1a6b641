"""How each value an SNMP agent can send becomes a profile field's value, or a reading error.

Every type pysnmp 7 returns is handled (SMIv2, RFC 2578 / RFC 3416): INTEGER and its kin
(Integer32, Counter32, Gauge32, Unsigned32, TimeTicks, Counter64), OCTET STRING, Opaque,
IpAddress, BITS, OBJECT IDENTIFIER, NULL. A value either maps to the type the profile gives
its object (`int`, `float`, `string`, `timeticks`, or through `map`), or `convert` raises
`ValueProblem`, whose text names the field and the OID: nothing is dropped silently.

Opaque carries another BER value inside. net-snmp's agents use it for what SMIv2 has no type
for (net-snmp's asn1.h, ASN_OPAQUE_*): a float (`9F 78 04` + 4 bytes IEEE 754), a double
(`9F 79 08` + 8 bytes), 64-bit counters and integers (`9F 76`, `9F 7A`, `9F 7B`). So the bytes
`44 07 9F 78 04 41 5B 33 33` are an Opaque holding the float 13.7. Any other Opaque is decoded
as plain BER (RFC 1155 defines Opaque as any ASN.1 value, BER-encoded).
"""

from __future__ import annotations

import math
import struct
from typing import Any

from pyasn1.codec.ber import decoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pysnmp.proto.rfc1902 import Bits, IpAddress, Opaque

from fleet.protocol.profiles import SnmpObject

# net-snmp's opaque-wrapped types: the second tag byte after 0x9F, and how to read the body.
_OPAQUE_TAG1 = 0x9F
_OPAQUE_TYPES: dict[int, tuple[str, int | None]] = {
    0x78: ("float", 4),
    0x79: ("double", 8),
    0x76: ("counter64", None),
    0x7A: ("int64", None),
    0x7B: ("uint64", None),
}


class ValueProblem(ValueError):
    """A value that cannot become its field's value; the message names field and OID."""


def describe(obj: SnmpObject) -> str:
    """An object as problems name it: `field (oid)`."""
    return f"{obj.field} ({obj.oid})"


def unwrap_opaque(payload: bytes) -> int | float | bytes | str:
    """The value inside an Opaque's payload: a number for net-snmp's float, double and 64-bit
    types, else whatever plain BER value it holds (an INTEGER, an OCTET STRING's bytes, an
    OID's dotted text). Raises ValueError when the payload is none of these."""
    if len(payload) >= 3 and payload[0] == _OPAQUE_TAG1 and payload[1] in _OPAQUE_TYPES:
        kind, size = _OPAQUE_TYPES[payload[1]]
        length = payload[2]
        body = payload[3:]
        if len(body) != length or (size is not None and length != size) or not 1 <= length <= 9:
            raise ValueError(f"an Opaque {kind} of {length} bytes, with {len(body)} given")
        if kind == "float":
            return _shortest_float32(body)
        if kind == "double":
            return float(struct.unpack(">d", body)[0])
        return int.from_bytes(body, "big", signed=kind == "int64")
    try:
        inner, rest = decoder.decode(payload)
    except (PyAsn1Error, ValueError, TypeError, IndexError, OverflowError) as exc:
        raise ValueError(
            f"an Opaque whose contents are not BER ({exc.__class__.__name__})"
        ) from None
    if rest:
        raise ValueError(f"an Opaque with {len(rest)} bytes after its value")
    if isinstance(inner, univ.Integer):
        return int(inner)
    if isinstance(inner, univ.OctetString):
        return inner.asOctets()
    if isinstance(inner, univ.ObjectIdentifier):
        return ".".join(str(n) for n in inner)
    raise ValueError(f"an Opaque holding {type(inner).__name__}, which no field takes")


def _shortest_float32(body: bytes) -> float:
    """The float32 in `body` as its shortest decimal (13.7, not 13.699999809265137)."""
    value = float(struct.unpack(">f", body)[0])
    if not math.isfinite(value):
        return value
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.pack(">f", short) == body:
            return short
    return value


def decode_octets(raw: bytes) -> tuple[str, str | None]:
    """Text from an OCTET STRING: UTF-8, or Latin-1 (every byte a character, nothing lost)
    with a note saying so. Control bytes (a C string's NUL) are left to the reading's
    cleaning, which removes them and says so."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "not UTF-8: read as Latin-1"


def plain_value(value: Any) -> tuple[int | float | str | None, str | None]:
    """A pysnmp value as a plain Python value (int, float, str, or None for NULL), and a note
    about how text was decoded. Raises ValueError for what cannot be read at all."""
    if isinstance(value, Opaque):
        inner = unwrap_opaque(value.asOctets())
        if isinstance(inner, bytes):
            return decode_octets(inner)
        return inner, None
    if isinstance(value, IpAddress):
        return ".".join(str(b) for b in value.asOctets()), None
    if isinstance(value, Bits):
        return value.asOctets().hex(), None
    if isinstance(value, univ.Null):  # before OctetString, which pyasn1 derives it from
        return None, None
    if isinstance(value, univ.OctetString):
        return decode_octets(value.asOctets())
    if isinstance(value, univ.Integer):
        return int(value), None
    if isinstance(value, univ.ObjectIdentifier):
        return ".".join(str(n) for n in value), None
    raise ValueError(f"a value of type {type(value).__name__}, which no field takes")


def _number(plain: int | float | str, obj: SnmpObject) -> int | float:
    if isinstance(plain, (int, float)):
        return plain
    text = plain.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ValueProblem(
            f"{describe(obj)}: the text {text[:32]!r} is not a number ({obj.type} expected)"
        ) from None
    return number


def convert(obj: SnmpObject, value: Any) -> tuple[Any, str | None]:
    """An SNMP value as the profile says to read it: map, then type and scale. Returns the
    field's value and a note (text decoding), or raises ValueProblem naming field and OID."""
    try:
        plain, note = plain_value(value)
    except ValueError as exc:
        raise ValueProblem(f"{describe(obj)}: {exc}") from None
    if plain is None:
        raise ValueProblem(f"{describe(obj)}: the agent sent NULL, no value")
    if obj.map is not None:
        key = plain if isinstance(plain, str) else _map_key(plain)
        if key.strip() not in obj.map:
            raise ValueProblem(
                f"{describe(obj)}: {key[:32]!r} is not in the profile's map "
                f"({', '.join(sorted(obj.map))})"
            )
        return obj.map[key.strip()], note
    if obj.type == "string":
        return (plain if isinstance(plain, str) else _map_key(plain)), note
    number = _number(plain, obj)
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueProblem(f"{describe(obj)}: {number} is not a finite number")
    if obj.type in ("int", "timeticks") and isinstance(number, float):
        if not number.is_integer():
            raise ValueProblem(f"{describe(obj)}: {number!r} is not a whole number ({obj.type})")
        number = int(number)
    if obj.type == "timeticks":
        return round(number / 100 * obj.scale, 9), note
    if obj.type == "float":
        number = float(number)
    if obj.scale == 1.0:
        return number, note
    return round(number * obj.scale, 9), note  # 271 * 0.1 is 27.1, not 27.100000000000001


def _map_key(number: int | float) -> str:
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    return str(number)
