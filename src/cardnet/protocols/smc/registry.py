"""The SMC function registry: functions by name and code hash, and the terms every module agrees on first.

TrustedPals computes ``F(D)`` where ``D`` is the vector the modules decided by UIC. Before any module takes an
input, all of them must agree on *which* ``F``: its name, the hash of its code, ``n``, ``t`` and the bound on one
encoded input (the bound is what every UIC message is padded to). This module holds the pieces of that agreement:

* :class:`FunctionSpec`: one registered function: its name, input bound, the input encoder and strict decoder,
  the pure ``F`` (a vector of input bytes or None in, result bytes out), the result renderers for people and
  scripts, and :attr:`FunctionSpec.code_hash`.
* :func:`code_hash_of`: SHA-256 over the *bytecode* of those callables and of every helper and constant they
  reach by name (see its docstring for why that is the same on every host running the same cardnet).
* :class:`Agreement`: the terms ``(function, code_hash, n, t, max_input_bytes)`` with one deterministic CBOR
  encoding (:data:`MAX_TERMS_BYTES` at most) and a strict decoder.
* :class:`Registry`: the functions a host knows; :meth:`Registry.check` refuses terms naming an unknown function,
  a different code hash, ``n < 2``, ``t >= n/2`` or a bound the function does not allow, each with its reason.

Every failure is a :class:`~cardnet.protocols.errors.ProtocolError`. The shipped functions are in
:mod:`cardnet.protocols.smc.functions`.
"""

from __future__ import annotations

import dataclasses
import dis
import hashlib
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Final

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc.uic_wire import MAX_INPUT_BYTES, MAX_MODULES
from cardnet.wire import Bytes, DecodeError, Field, Schema, Text, UInt

Vector = Sequence[bytes | None]
"""What ``F`` is computed on: one entry per module, its input bytes or None (bottom: the input never arrived)."""

CODE_HASH_BYTES: Final = 32
MAX_NAME_BYTES: Final = 32
NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_PARAMS_BYTES: Final = 16 * 1024  # a function's declared parameters (e.g. a ballot's choices)
MAX_TERMS_BYTES: Final = 83  # map 1 + keys 5 + name 2+32 + hash 2+32 + n 2 + t 2 + bound 5 (tested)
_HASH_LABEL: Final = b"cardnet/smc/function/v1\x00"

# --- the code hash -------------------------------------------------------------------------------------------


def _frame(tag: bytes, payload: bytes) -> bytes:
    return tag + len(payload).to_bytes(4, "big") + payload


def _canon(value: object) -> bytes:
    """One byte string per constant, the same in every process: no addresses, no file names, no line numbers,
    and frozensets (whose iteration order follows the per-process string hash seed) sorted."""
    if value is None or value is Ellipsis or isinstance(value, bool):
        return _frame(b"K", repr(value).encode())
    if isinstance(value, int):
        return _frame(b"I", str(value).encode())
    if isinstance(value, float | complex):
        return _frame(b"D", repr(value).encode())
    if isinstance(value, str):
        return _frame(b"S", value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return _frame(b"B", value)
    if isinstance(value, tuple):
        return _frame(b"T", b"".join(_canon(v) for v in value))
    if isinstance(value, frozenset):
        return _frame(b"F", b"".join(sorted(_canon(v) for v in value)))
    if isinstance(value, types.CodeType):
        return _frame(b"C", _code_bytes(value))
    return _frame(b"?", type(value).__qualname__.encode())


def _code_bytes(code: types.CodeType) -> bytes:
    """The parts of a code object that decide what it does: its instructions, each constant it loads given by
    value (not by its slot in ``co_consts``), its exception table, names and signature.

    Left out on purpose: ``co_filename`` (where cardnet is installed), ``co_firstlineno``, ``co_linetable`` and
    ``co_positions`` (line and column numbers: a comment added above a function must not change its hash), and
    constants no instruction loads, such as a docstring (so mending a docstring keeps the hash). ``python -OO``
    compiles different bytecode (a NOP where the docstring was, shifted offsets), hence other hashes: every host
    must run cardnet in the same mode. ``dis`` reads the unspecialised bytecode: CPython 3.11 hands out the
    original instructions, not the adaptive interpreter's quickened ones.
    """
    ops = []
    for ins in dis.get_instructions(code):
        if ins.opname == "EXTENDED_ARG":  # its bits are in the next instruction's arg
            continue
        arg = code.co_consts[ins.arg] if ins.opcode in dis.hasconst and ins.arg is not None else ins.arg
        ops.append(_frame(b"o", ins.opname.encode()) + _canon(arg))
    parts = (
        code.co_qualname,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_exceptiontable,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
    )
    return b"".join(ops) + b"".join(_canon(p) for p in parts)


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _code_objects(c)


def _ours(obj: object, module: str) -> bool:
    """Part of what is hashed: defined in cardnet, or in the module of the function being hashed."""
    mod = getattr(obj, "__module__", None) or ""
    return mod in (module, "cardnet") or mod.startswith("cardnet.")


def _is_plain(value: object) -> bool:
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return True
    return isinstance(value, tuple | frozenset) and all(_is_plain(v) for v in value)


def code_hash_of(
    callables: Sequence[Callable[..., object]], *, name: str, max_input_bytes: int, params: bytes = b""
) -> bytes:
    """SHA-256 identifying the exact code of a function: its callables and everything they reach by name.

    Hashed, after a label, the function's ``name``, ``max_input_bytes``, ``params`` and the interpreter's
    bytecode tag (``sys.implementation.cache_tag``, e.g. ``cpython-311``), then, walking from ``callables`` in
    order: each Python function's code objects (nested ones included) and, for every global name that code
    uses, the value it names in the function's module if that value is a function or class of cardnet (or of the
    same module: methods are walked in name order), a plain constant (numbers, strings, bytes, tuples,
    frozensets of them), a compiled regular expression (pattern and flags) or a cardnet dataclass instance (by
    its ``repr``, e.g. a :class:`~cardnet.wire.Schema`). Library code (cbor2, cryptography, the stdlib) and
    attributes reached through a module (``profile.sha256``) are covered by their name only: the cardnet
    version fixes them.

    Why the same cardnet version gives the same hash on every host: the walk's order follows the code itself,
    each part is framed by length, CPython compiles the same source to the same bytecode under one minor
    version, and nothing process-specific goes in (no file paths, line numbers, addresses, ids, docstrings or
    hash-seeded set orders). Hosts under different Python minor versions, or one under ``python -OO``, get
    different hashes, and the terms check refuses them: the bytecode is a different program, however alike the
    results would be.
    """
    h = hashlib.sha256(_HASH_LABEL)
    for part in (name.encode(), str(max_input_bytes).encode(), params, sys.implementation.cache_tag.encode()):
        h.update(_frame(b"H", part))
    seen: set[int] = set()
    queue: list[object] = list(callables)
    while queue:
        obj = queue.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        wrapped = getattr(obj, "__wrapped__", None)  # functools.lru_cache, functools.wraps
        if wrapped is not None and not isinstance(obj, types.FunctionType):
            queue.append(wrapped)
            continue
        if isinstance(obj, types.MethodType):
            queue.append(obj.__func__)
            continue
        if isinstance(obj, type):
            h.update(_frame(b"c", f"{obj.__module__}:{obj.__qualname__}".encode()))
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if isinstance(member, staticmethod | classmethod):
                    member = member.__func__
                if isinstance(member, types.FunctionType):
                    queue.append(member)
            continue
        if not isinstance(obj, types.FunctionType):  # a builtin or a callable object: its type names it
            h.update(_frame(b"o", type(obj).__qualname__.encode()))
            continue
        h.update(_frame(b"f", f"{obj.__module__}:{obj.__qualname__}".encode()))
        h.update(_canon(obj.__code__))
        h.update(_canon(obj.__defaults__) + _canon(tuple(sorted((obj.__kwdefaults__ or {}).items()))))
        glob = obj.__globals__
        for code in _code_objects(obj.__code__):
            for ref in code.co_names:
                if ref not in glob:
                    continue
                value = glob[ref]
                if isinstance(value, types.FunctionType | type) or hasattr(value, "__wrapped__"):
                    if _ours(value, obj.__module__):
                        queue.append(value)
                elif _is_plain(value):
                    h.update(_frame(b"g", ref.encode()) + _canon(value))
                elif isinstance(value, re.Pattern):
                    h.update(_frame(b"r", ref.encode()) + _canon((value.pattern, value.flags)))
                elif dataclasses.is_dataclass(value) and _ours(type(value), obj.__module__):
                    h.update(_frame(b"d", ref.encode() + b"=" + repr(value).encode()))
    return h.digest()


# --- one registered function ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FunctionSpec:
    """One function modules can compute: ``F`` and everything a host needs around it.

    ``parse_input(value)`` turns what a person or script gives (CLI text such as ``"42"``, or a JSON-able value)
    into the canonical input bytes, or raises :class:`ProtocolError` (``bad_input``) saying what is wrong and what
    is expected. ``decode_input(raw)`` strictly decodes input bytes (only :class:`ProtocolError` escapes).
    ``compute(vector)`` is ``F``: pure, deterministic and total (it never raises on any vector of valid inputs
    and None). ``render_result`` (a short line for people) and ``result_to_json`` (for scripts) take the result
    bytes. ``max_input_bytes`` bounds one encoded input, ``min_input_bytes`` is the shortest valid one, and
    ``params`` holds declared parameters (e.g. a ballot's choices) in canonical form; all three are in the hash.
    """

    name: str
    summary: str
    max_input_bytes: int
    min_input_bytes: int = 1
    parse_input: Callable[[object], bytes]
    decode_input: Callable[[bytes], object]
    compute: Callable[[Vector], bytes]
    render_result: Callable[[bytes], str]
    result_to_json: Callable[[bytes], object]
    params: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or NAME_PATTERN.fullmatch(self.name) is None:
            raise ValueError(f"a function name is 1..{MAX_NAME_BYTES} of [a-z0-9_], starting with a letter")
        if not 1 <= self.min_input_bytes <= self.max_input_bytes <= MAX_INPUT_BYTES:
            raise ValueError(f"{self.name}: need 1 <= min_input_bytes <= max_input_bytes <= {MAX_INPUT_BYTES}")
        if len(self.params) > MAX_PARAMS_BYTES:
            raise ValueError(f"{self.name}: params are at most {MAX_PARAMS_BYTES} bytes")

    @cached_property
    def code_hash(self) -> bytes:
        """The hash of the function's code and declared bounds, made when first asked for (hashing the code walks
        it: a process that never runs this function does not pay for it)."""
        callables = (self.parse_input, self.decode_input, self.compute, self.render_result, self.result_to_json)
        return code_hash_of(callables, name=self.name, max_input_bytes=self.max_input_bytes, params=self.params)

    def encode_input(self, value: object, *, max_input_bytes: int | None = None) -> bytes:
        """The input bytes for ``value``, refused if longer than the agreed bound (or the registered one)."""
        return self._within(self.parse_input(value), max_input_bytes)

    def check_input(self, raw: bytes, *, max_input_bytes: int | None = None) -> bytes:
        """``raw`` if it is a valid input within the bound (what a module does with its host's input)."""
        if not isinstance(raw, bytes):
            raise ProtocolError("bad_input", f"{self.name}: an input is bytes, got {type(raw).__name__}")
        self._within(raw, max_input_bytes)
        self.decode_input(raw)
        return raw

    def _within(self, raw: bytes, max_input_bytes: int | None) -> bytes:
        bound = self.max_input_bytes if max_input_bytes is None else min(max_input_bytes, self.max_input_bytes)
        if len(raw) > bound:
            raise ProtocolError(
                "input_too_large",
                f"{self.name}: the input encodes to {len(raw)} bytes, the agreed bound is {bound}: "
                "give a smaller input, or agree on a larger bound before the run",
            )
        return raw

    def evaluate(self, vector: Vector) -> bytes:
        """``F(vector)``: the result bytes every module computes from the decided vector."""
        return self.compute(vector)

    def render(self, result: bytes) -> str:
        """The result as one short line for people (:class:`ProtocolError` if ``result`` is not one)."""
        return self.render_result(result)

    def to_json(self, result: bytes) -> object:
        """The result as a JSON-able value for scripts (:class:`ProtocolError` if ``result`` is not one)."""
        return self.result_to_json(result)


# --- the terms -----------------------------------------------------------------------------------------------

TERMS = Schema(
    "smc.terms",
    [
        Field(0, "function", Text(MAX_NAME_BYTES)),
        Field(1, "code_hash", Bytes(CODE_HASH_BYTES, CODE_HASH_BYTES)),
        Field(2, "n", UInt(MAX_MODULES)),
        Field(3, "t", UInt(MAX_MODULES)),
        Field(4, "max_input_bytes", UInt(MAX_INPUT_BYTES)),
    ],
)


def _bad_terms(message: str) -> ProtocolError:
    return ProtocolError("bad_terms", f"SMC terms: {message}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Agreement:
    """The terms of one SMC run, fixed before any input is taken: which function (name and code hash), how many
    modules ``n``, how many may fail ``t``, and the bound on one encoded input.

    On the wire (:meth:`encode`): ``{0: function, 1: code_hash, 2: n, 3: t, 4: max_input_bytes}`` in
    deterministic CBOR, at most :data:`MAX_TERMS_BYTES` bytes. Construction checks only shape and absolute
    limits; whether a host accepts the terms is :meth:`Registry.check`.
    """

    function: str
    code_hash: bytes
    n: int
    t: int
    max_input_bytes: int

    def __post_init__(self) -> None:
        if not isinstance(self.function, str) or NAME_PATTERN.fullmatch(self.function) is None:
            raise _bad_terms(
                f"a function name is 1..{MAX_NAME_BYTES} characters of a-z, 0-9 and _, starting with a letter, "
                f"got {self.function!r:.60}"
            )
        if type(self.code_hash) is not bytes or len(self.code_hash) != CODE_HASH_BYTES:
            raise _bad_terms(f"the code hash is {CODE_HASH_BYTES} bytes (SHA-256)")
        for label, value, top in (
            ("n", self.n, MAX_MODULES),
            ("t", self.t, MAX_MODULES),
            ("max_input_bytes", self.max_input_bytes, MAX_INPUT_BYTES),
        ):
            if type(value) is not int or not 0 <= value <= top:
                raise _bad_terms(f"{label} is a whole number 0..{top}, got {value!r:.40}")

    def encode(self) -> bytes:
        """The one deterministic encoding of the terms."""
        return TERMS.encode(
            {
                "function": self.function,
                "code_hash": self.code_hash,
                "n": self.n,
                "t": self.t,
                "max_input_bytes": self.max_input_bytes,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Agreement:
        """Strictly decode terms; only :class:`ProtocolError` escapes (the wire reason, e.g. ``truncated``, kept)."""
        try:
            f = TERMS.decode(raw)
        except DecodeError as exc:
            raise ProtocolError(exc.reason, f"SMC terms: {exc}") from None
        return cls(
            function=f["function"], code_hash=f["code_hash"], n=f["n"], t=f["t"], max_input_bytes=f["max_input_bytes"]
        )

    def digest(self) -> bytes:
        """SHA-256 of the encoding: a short name for these terms (e.g. to bind a run to them)."""
        return hashlib.sha256(self.encode()).digest()


# --- the registry --------------------------------------------------------------------------------------------


class Registry:
    """The functions one host knows, by name. :meth:`check` decides whether it takes part in a run's terms."""

    def __init__(self, specs: Iterable[FunctionSpec]) -> None:
        self._by_name: dict[str, FunctionSpec] = {}
        for spec in specs:
            if spec.name in self._by_name:
                raise ValueError(f"two functions are named {spec.name!r}: one name, one function")
            self._by_name[spec.name] = spec

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[FunctionSpec]:
        return iter(sorted(self._by_name.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_name))

    def replace(self, spec: FunctionSpec) -> Registry:
        """A copy of this registry with ``spec`` in place of the function of the same name (or added)."""
        return Registry([*(s for s in self._by_name.values() if s.name != spec.name), spec])

    def get(self, name: str) -> FunctionSpec:
        spec = self._by_name.get(name)
        if spec is None:
            raise ProtocolError(
                "unknown_function",
                f"no SMC function is registered as {name!r:.60} here (known: {', '.join(self.names())}): "
                "pick one of these, or run a cardnet that has it on every host",
            )
        return spec

    def terms(self, name: str, *, n: int, t: int, max_input_bytes: int | None = None) -> Agreement:
        """Terms for a run of ``name`` with our code hash (the registered bound unless a smaller one is given),
        checked as :meth:`check` would check them."""
        spec = self.get(name)
        bound = spec.max_input_bytes if max_input_bytes is None else max_input_bytes
        terms = Agreement(function=name, code_hash=spec.code_hash, n=n, t=t, max_input_bytes=bound)
        self.check(terms)
        return terms

    def check(self, terms: Agreement) -> FunctionSpec:
        """The function to compute if this host can take part in a run under ``terms``; else :class:`ProtocolError`.

        Reasons: ``unknown_function``, ``code_hash_mismatch``, ``too_few_parties`` (n < 2), ``too_many_faults``
        (t >= n/2: UIC, hence SMC, needs a majority of correct modules), ``bound_too_large`` (over the function's
        registered bound), ``bound_too_small`` (no valid input would fit).
        """
        spec = self.get(terms.function)
        if terms.code_hash != spec.code_hash:
            raise ProtocolError(
                "code_hash_mismatch",
                f"function {spec.name!r} has code hash {spec.code_hash.hex()[:16]}... here, the terms say "
                f"{terms.code_hash.hex()[:16]}...: the hosts run different code for it (another cardnet or Python "
                "version, or another ballot); run the same cardnet version under the same Python on every host",
            )
        if terms.n < 2:
            raise ProtocolError(
                "too_few_parties", f"a multiparty computation needs at least 2 parties, the terms say n={terms.n}"
            )
        if 2 * terms.t >= terms.n:
            raise ProtocolError(
                "too_many_faults",
                f"SMC needs a majority of correct modules (t < n/2), the terms say n={terms.n}, t={terms.t}: "
                f"lower t to at most {(terms.n - 1) // 2}, or run with at least {2 * terms.t + 1} parties",
            )
        if terms.max_input_bytes > spec.max_input_bytes:
            raise ProtocolError(
                "bound_too_large",
                f"function {spec.name!r} takes inputs of at most {spec.max_input_bytes} bytes, the terms declare "
                f"{terms.max_input_bytes}: declare at most {spec.max_input_bytes}",
            )
        if terms.max_input_bytes < spec.min_input_bytes:
            raise ProtocolError(
                "bound_too_small",
                f"function {spec.name!r} has no input shorter than {spec.min_input_bytes} bytes, the terms declare "
                f"a bound of {terms.max_input_bytes}: declare at least {spec.min_input_bytes}",
            )
        return spec
