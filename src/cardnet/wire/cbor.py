"""Deterministic CBOR params with a strict schema per message type.

Encoding is RFC 8949 section 4.2 "core deterministic encoding" (shortest
heads, definite lengths, map keys sorted bytewise); on the wire every map key
is a small unsigned integer (so length-first and bytewise orders agree and a
key costs one byte). Decoding is strict: a param must be exactly one CBOR
item, contain only what its :class:`Schema` declares, with the declared types
and within the declared sizes, and be byte-for-byte the deterministic
encoding of itself. Anything else raises :class:`DecodeError` with a reason.

A schema is written as fields of types::

    COPY = Schema("trn.copy", [
        Field(0, "oid", Bytes(32)),
        Field(1, "token", Bytes(64 * 1024)),
        Field(2, "note", Text(200), optional=True),
    ])
    raw = COPY.encode({"oid": b"...", "token": b"..."})
    COPY.decode(raw) == {"oid": b"...", "token": b"..."}
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from cardnet.wire.errors import DecodeError
from cardnet.wire.ids import UID_BYTES, Uid

MAX_NESTING = 16
SLOW: Any = object()  # "take the slow, explaining path"


def dumps(obj: object) -> bytes:
    """Deterministic CBOR (RFC 8949 section 4.2) of plain data."""
    return cbor2.dumps(obj, canonical=True)


def loads_one(raw: bytes) -> object:
    """Decode exactly one CBOR item: truncation, trailing bytes and junk are errors."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise DecodeError("wrong_type", f"CBOR input must be bytes, got {type(raw).__name__}")
    buf = io.BytesIO(raw)
    try:
        obj = cbor2.CBORDecoder(buf).decode()
    except cbor2.CBORDecodeEOF:
        raise DecodeError("truncated", "the CBOR item ends early: the input was cut short") from None
    except (
        cbor2.CBORDecodeError,
        RecursionError,
        ValueError,
        TypeError,
        OverflowError,
        LookupError,
        MemoryError,
    ) as exc:
        raise DecodeError("bad_cbor", f"not valid CBOR: {exc}") from None
    if buf.tell() != len(raw):
        raise DecodeError(
            "trailing_bytes",
            f"{len(raw) - buf.tell()} bytes follow the CBOR item: send exactly one item",
        )
    return obj


class FieldType:
    """A field type: checks a decoded CBOR value and turns it into Python."""

    label: str = "value"

    def check(self, value: object, path: str, depth: int) -> Any:  # pragma: no cover
        raise NotImplementedError

    def to_cbor(self, value: Any, path: str) -> object:
        return self.check(value, path, 0)

    def fast_in(self, value: object) -> Any:
        """The checked value if ``value`` is plainly valid, else ``SLOW`` (then ``check`` explains)."""
        return SLOW

    def fast_out(self, value: object) -> Any:
        """The CBOR value if ``value`` is plainly valid, else ``SLOW`` (then ``to_cbor`` explains)."""
        return SLOW

    def wrong(self, value: object, path: str) -> DecodeError:
        return DecodeError("wrong_type", f"{path} must be {self.label}, got {type(value).__name__}")


@dataclass(frozen=True)
class Bytes(FieldType):
    max_len: int
    min_len: int = 0

    @property
    def label(self) -> str:  # type: ignore[override]
        return "a byte string"

    def fast_in(self, value: object) -> Any:
        if type(value) is bytes and self.min_len <= len(value) <= self.max_len:
            return value
        return SLOW

    fast_out = fast_in

    def check(self, value: object, path: str, depth: int) -> bytes:
        if not isinstance(value, bytes):
            raise self.wrong(value, path)
        if len(value) > self.max_len:
            raise DecodeError("oversize", f"{path} is {len(value)} bytes, at most {self.max_len} allowed")
        if len(value) < self.min_len:
            raise DecodeError("undersize", f"{path} is {len(value)} bytes, at least {self.min_len} needed")
        return value


@dataclass(frozen=True)
class Text(FieldType):
    max_len: int

    @property
    def label(self) -> str:  # type: ignore[override]
        return "a text string"

    def fast_in(self, value: object) -> Any:
        # at most 4 bytes of UTF-8 a character; an ASCII string's UTF-8 is one byte a character
        if type(value) is str and (4 * len(value) <= self.max_len or (value.isascii() and len(value) <= self.max_len)):
            return value
        return SLOW

    fast_out = fast_in

    def check(self, value: object, path: str, depth: int) -> str:
        if not isinstance(value, str):
            raise self.wrong(value, path)
        if len(value.encode("utf-8", "surrogatepass")) > self.max_len:
            raise DecodeError("oversize", f"{path} is longer than {self.max_len} bytes of UTF-8")
        return value


@dataclass(frozen=True)
class UInt(FieldType):
    max_value: int = 2**64 - 1

    @property
    def label(self) -> str:  # type: ignore[override]
        return "an unsigned integer"

    def fast_in(self, value: object) -> Any:
        if type(value) is int and 0 <= value <= self.max_value:
            return value
        return SLOW

    fast_out = fast_in

    def check(self, value: object, path: str, depth: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.wrong(value, path)
        if value < 0:
            raise DecodeError("wrong_type", f"{path} must not be negative, got {value}")
        if value > self.max_value:
            raise DecodeError("oversize", f"{path} is {value}, at most {self.max_value} allowed")
        return value


@dataclass(frozen=True)
class Int(FieldType):
    min_value: int = -(2**63)
    max_value: int = 2**63 - 1

    @property
    def label(self) -> str:  # type: ignore[override]
        return "an integer"

    def check(self, value: object, path: str, depth: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.wrong(value, path)
        if not self.min_value <= value <= self.max_value:
            raise DecodeError("oversize", f"{path} is {value}, allowed {self.min_value}..{self.max_value}")
        return value


@dataclass(frozen=True)
class Bool(FieldType):
    @property
    def label(self) -> str:  # type: ignore[override]
        return "true or false"

    def fast_in(self, value: object) -> Any:
        return value if type(value) is bool else SLOW

    fast_out = fast_in

    def check(self, value: object, path: str, depth: int) -> bool:
        if not isinstance(value, bool):
            raise self.wrong(value, path)
        return value


@dataclass(frozen=True)
class UidType(FieldType):
    """A :class:`Uid`, 16 bytes on the wire."""

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"a {UID_BYTES}-byte Uid"

    def fast_in(self, value: object) -> Any:
        if type(value) is bytes and len(value) == UID_BYTES:
            return Uid.from_bytes(value)
        return SLOW

    def fast_out(self, value: object) -> Any:
        return value.raw if type(value) is Uid else SLOW

    def check(self, value: object, path: str, depth: int) -> Uid:
        if isinstance(value, Uid):
            return value
        if not isinstance(value, bytes):
            raise self.wrong(value, path)
        if len(value) != UID_BYTES:
            raise DecodeError("wrong_type", f"{path} must be {UID_BYTES} bytes, got {len(value)}")
        return Uid.from_bytes(value)

    def to_cbor(self, value: Any, path: str) -> object:
        if not isinstance(value, Uid):
            raise self.wrong(value, path)
        return bytes(value)


@dataclass(frozen=True)
class ListOf(FieldType):
    item: FieldType
    max_items: int

    @property
    def label(self) -> str:  # type: ignore[override]
        return "an array"

    def check(self, value: object, path: str, depth: int) -> list[Any]:
        if depth > MAX_NESTING:
            raise DecodeError("oversize", f"{path} is nested deeper than {MAX_NESTING} levels")
        if not isinstance(value, list):
            raise self.wrong(value, path)
        if len(value) > self.max_items:
            raise DecodeError("oversize", f"{path} has {len(value)} items, at most {self.max_items}")
        return [self.item.check(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]

    def to_cbor(self, value: Any, path: str) -> object:
        if not isinstance(value, (list, tuple)):
            raise self.wrong(value, path)
        if len(value) > self.max_items:
            raise DecodeError("oversize", f"{path} has {len(value)} items, at most {self.max_items}")
        return [self.item.to_cbor(v, f"{path}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class Nested(FieldType):
    schema: Schema

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"a {self.schema.name} map"

    def check(self, value: object, path: str, depth: int) -> dict[str, Any]:
        if depth > MAX_NESTING:
            raise DecodeError("oversize", f"{path} is nested deeper than {MAX_NESTING} levels")
        return self.schema.check(value, path, depth + 1)

    def to_cbor(self, value: Any, path: str) -> object:
        return self.schema.to_cbor(value, path)


def _fast_kind(ftype: FieldType) -> int:
    """How the schema fast paths check a field of this type: 1 a plain UInt, 2 a plain Bytes, 0 by its methods."""
    if type(ftype) is UInt:
        return 1
    if type(ftype) is Bytes:
        return 2
    return 0


@dataclass(frozen=True)
class Field:
    """One map entry: wire ``key`` (0..23 keeps it one byte), Python ``name``, type."""

    key: int
    name: str
    type: FieldType
    optional: bool = False


@dataclass(frozen=True)
class Schema:
    """The layout of one param map. ``decode`` is strict; ``encode`` is deterministic."""

    name: str
    fields: Sequence[Field]
    by_key: Mapping[int, Field] = field(init=False, repr=False, compare=False)
    by_name: Mapping[str, Field] = field(init=False, repr=False, compare=False)
    _required: frozenset[str] = field(init=False, repr=False, compare=False)
    _sorted: tuple[Field, ...] = field(init=False, repr=False, compare=False)
    # the fast paths' view of the fields: key -> (name, type, kind) and, in key order, (name, key, optional, type,
    # kind); kind 1 is a plain UInt, 2 a plain Bytes (checked inline, without a call), 0 any other type
    _fast_in: Mapping[int, tuple[str, FieldType, int]] = field(init=False, repr=False, compare=False)
    _fast_out: tuple[tuple[str, int, bool, FieldType, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key = {f.key: f for f in self.fields}
        by_name = {f.name: f for f in self.fields}
        if len(by_key) != len(self.fields) or len(by_name) != len(self.fields):
            raise ValueError(f"schema {self.name}: duplicate field key or name")
        object.__setattr__(self, "by_key", by_key)
        object.__setattr__(self, "by_name", by_name)
        object.__setattr__(self, "_sorted", tuple(sorted(self.fields, key=lambda f: f.key)))
        object.__setattr__(self, "_required", frozenset(f.name for f in self.fields if not f.optional))
        kinds = {f.key: _fast_kind(f.type) for f in self.fields}
        object.__setattr__(self, "_fast_in", {f.key: (f.name, f.type, kinds[f.key]) for f in self.fields})
        object.__setattr__(
            self, "_fast_out", tuple((f.name, f.key, f.optional, f.type, kinds[f.key]) for f in self._sorted)
        )

    def check(self, obj: object, path: str, depth: int = 0) -> dict[str, Any]:
        out = self._fast_check(obj)
        return out if out is not None else self._check_slow(obj, path, depth)

    def _fast_check(self, obj: object) -> dict[str, Any] | None:
        """The decoded fields if ``obj`` is plainly valid with keys in increasing order, else None."""
        if type(obj) is not dict:
            return None
        out: dict[str, Any] = {}
        fast = self._fast_in
        prev = -1
        for key, value in obj.items():
            entry = fast.get(key) if type(key) is int and key > prev else None
            if entry is None:
                return None
            prev = key
            name, ftype, kind = entry
            if kind == 1:  # UInt.fast_in, inlined
                if type(value) is not int or not 0 <= value <= ftype.max_value:  # type: ignore[attr-defined]
                    return None
                out[name] = value
            elif kind == 2:  # Bytes.fast_in, inlined
                if type(value) is not bytes or not ftype.min_len <= len(value) <= ftype.max_len:  # type: ignore[attr-defined]
                    return None
                out[name] = value
            else:
                v = ftype.fast_in(value)
                if v is SLOW:
                    return None
                out[name] = v
        return out if self._required.issubset(out.keys()) else None

    def _check_slow(self, obj: object, path: str, depth: int) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise DecodeError("wrong_type", f"{path} must be a map, got {type(obj).__name__}")
        out: dict[str, Any] = {}
        for key, value in obj.items():
            spec = self.by_key.get(key) if isinstance(key, int) and not isinstance(key, bool) else None
            if spec is None:
                raise DecodeError("unknown_key", f"{path} has key {key!r}, which {self.name} does not define")
            out[spec.name] = spec.type.check(value, f"{path}.{spec.name}", depth)
        for spec in self.fields:
            if not spec.optional and spec.name not in out:
                raise DecodeError("missing_key", f"{path} lacks the required field {spec.name!r}")
        return out

    def to_cbor(self, values: Mapping[str, Any], path: str) -> dict[int, object]:
        """The CBOR map for ``values``, built in increasing key order."""
        if type(values) is dict:
            out: dict[int, object] = {}
            found = 0
            for name, key, optional, ftype, kind in self._fast_out:
                value = values.get(name)
                if value is None:
                    if optional:
                        continue
                    break
                if kind == 1:  # UInt.fast_out, inlined
                    if type(value) is not int or not 0 <= value <= ftype.max_value:  # type: ignore[attr-defined]
                        break
                elif kind == 2:  # Bytes.fast_out, inlined
                    if type(value) is not bytes or not ftype.min_len <= len(value) <= ftype.max_len:  # type: ignore[attr-defined]
                        break
                else:
                    value = ftype.fast_out(value)
                    if value is SLOW:
                        break
                out[key] = value
                found += 1
            else:
                if found == len(values):
                    return out
        return self._to_cbor_slow(values, path)

    def _to_cbor_slow(self, values: Mapping[str, Any], path: str) -> dict[int, object]:
        if not isinstance(values, Mapping):
            raise DecodeError("wrong_type", f"{path} must be a mapping of field names")
        out: dict[int, object] = {}
        for name, value in values.items():
            spec = self.by_name.get(name)
            if spec is None:
                raise DecodeError("unknown_key", f"{path}: {self.name} has no field {name!r}")
            if value is None and spec.optional:
                continue
            out[spec.key] = spec.type.to_cbor(value, f"{path}.{name}")
        for spec in self.fields:
            if not spec.optional and spec.key not in out:
                raise DecodeError("missing_key", f"{path} lacks the required field {spec.name!r}")
        return dict(sorted(out.items()))

    def encode(self, values: Mapping[str, Any]) -> bytes:
        """Validate ``values`` (field name -> value) and encode them deterministically.

        Maps are built in increasing key order and every other item has one
        encoding in cbor2, so the plain encoder yields RFC 8949 section 4.2 bytes.
        (``StepContext.emit`` inlines this line: change both.)
        """
        return cbor2.dumps(self.to_cbor(values, self.name))

    def decode(self, raw: bytes) -> dict[str, Any]:
        """Strictly decode one param; only :class:`DecodeError` escapes.

        Fast path: one ``loads``, a field check that also demands increasing
        keys, and a byte comparison with the re-encoding (which catches
        trailing bytes, non-shortest heads and indefinite lengths). Anything
        else takes the slow path, which names the exact fault.
        """
        if type(raw) is bytes:
            try:
                obj = cbor2.loads(raw)
            except Exception:  # the slow path below names the fault
                obj = SLOW
            if obj is not SLOW:
                out = self._fast_check(obj)
                if out is not None and cbor2.dumps(obj) == raw:
                    return out
        return self._decode_slow(raw)

    def _decode_slow(self, raw: bytes) -> dict[str, Any]:
        obj = loads_one(raw)
        out = self.check(obj, self.name)
        try:
            canonical = dumps(obj)
        except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:  # pragma: no cover
            raise DecodeError("bad_cbor", f"{self.name}: cannot re-encode: {exc}") from None
        if canonical != bytes(raw):
            raise DecodeError(
                "not_deterministic",
                f"{self.name} is not in deterministic CBOR (RFC 8949 section 4.2): "
                "use shortest lengths, definite lengths and sorted keys",
            )
        return out


def head_bytes(n: int) -> int:
    """Bytes of the deterministic CBOR head that carries the argument ``n`` (a length, a count or an integer)."""
    return 1 if n < 24 else 2 if n < 2**8 else 3 if n < 2**16 else 5 if n < 2**32 else 9


def max_encoded_bytes(kind: FieldType | Schema) -> int:
    """The most bytes a value of ``kind`` (a field type or a whole schema's map) takes in deterministic CBOR.

    An upper bound computed from the declared sizes alone (every field present, every string and list at its
    maximum): what a receiver can size its limits by without looking at any message.
    """
    if isinstance(kind, Schema):
        return head_bytes(len(kind.fields)) + sum(head_bytes(f.key) + max_encoded_bytes(f.type) for f in kind.fields)
    if isinstance(kind, (Bytes, Text)):
        return head_bytes(kind.max_len) + kind.max_len
    if isinstance(kind, UInt):
        return head_bytes(kind.max_value)
    if isinstance(kind, Int):
        return max(head_bytes(max(kind.max_value, 0)), head_bytes(max(-1 - kind.min_value, 0)))
    if isinstance(kind, Bool):
        return 1
    if isinstance(kind, UidType):
        return head_bytes(UID_BYTES) + UID_BYTES
    if isinstance(kind, ListOf):
        return head_bytes(kind.max_items) + kind.max_items * max_encoded_bytes(kind.item)
    if isinstance(kind, Nested):
        return max_encoded_bytes(kind.schema)
    raise TypeError(f"no size bound known for the field type {type(kind).__name__}")
