"""Events as ODP receives them: the official client's JSON, byte for byte.

The official client sends ``json.dumps(events, cls=OdpEventEncoder)``: the standard library's
default output (separators ``", "`` and ``": "``, every non-ASCII character escaped as
``\\uXXXX``, keys in insertion order). A body this package sends is exactly the body the
official client would send for the same events in one request, and each event's bytes are
exactly ``json.dumps`` of the event.

The fast path: with ``pip install optimizely-odp-ext[fast]`` (ujson) installed, ujson encodes
with the same options. Where ujson is known to write something differently from the standard
library (a float with a one-digit exponent: ``1e-7`` for ``1e-07``; the DEL character left
unescaped), that chunk is encoded again with the standard library, so the wire bytes are the
same either way (a test compares both on many events). Set ``OPTIMIZELY_ODP_ENCODER=json`` to
use the standard library even when ujson is installed.

Each event is encoded on its own, when it is accepted; a batch joins their bytes. The standard
library's encoder is called the way ``json.dumps`` calls it, minus what ``json.dumps`` redoes on
every call (building the C encoder, checking for cycles: a validated event has none), which is
about a third of the time for a small event.

Both encoders refuse NaN and the infinities (``allow_nan=False``), which the official client would
write as the invalid JSON ``NaN`` and ``Infinity``: encoding is part of validating an event (see
:mod:`optimizely_odp_ext.event`).
"""

from __future__ import annotations

import functools
import json
import json.encoder
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any, Callable

ENCODER_VARIABLE = "OPTIMIZELY_ODP_ENCODER"
"""``json`` (or ``stdlib``) there: the standard library even when ujson is installed; ``ujson``
or unset: ujson when installed. Any other value is ignored (``doctor`` warns about it)."""
STDLIB_VALUES = ("json", "stdlib")
KNOWN_VALUES = (*STDLIB_VALUES, "ujson", "")
_ONE_DIGIT_EXPONENT = re.compile(r"e-\d[,}\]]")
"""A float ujson writes as ``1e-7`` where the standard library writes ``1e-07`` (Python's repr
writes an exponent only below 1e-4 or from 1e16, so only negative ones have one digit)."""

Dumps = Callable[[Any], str]


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def _make_stdlib_dumps() -> Dumps:
    """``json.dumps`` with its default options but ``allow_nan=False``, the C encoder built once
    (``json.dumps`` itself where the C accelerator is missing)."""
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:
        return functools.partial(json.dumps, allow_nan=False)
    encode_chunks = make_encoder(None, _not_serializable, json.encoder.encode_basestring_ascii, None,
                                 ": ", ", ", False, False, False)

    def dumps_with_c_encoder(value: Any) -> str:
        return "".join(encode_chunks(value, 0))

    return dumps_with_c_encoder


stdlib_dumps = _make_stdlib_dumps()
"""The standard library's encoder (:func:`dumps` may use ujson's): the cheaper of the two for a
small object, as ujson's call itself costs more than encoding a few keys."""
FAST_FROM_KEYS = 10
"""From this many keys on, an object is encoded with :func:`fast_dumps` (ujson when installed): below,
with :data:`stdlib_dumps` (measured on this package's benchmark events: ujson is faster from about
10 keys, and slower below)."""


def _load_ujson() -> Dumps | None:
    if os.environ.get(ENCODER_VARIABLE, "").strip().lower() in STDLIB_VALUES:
        return None
    try:
        import ujson
    except ImportError:
        return None
    ujson_dumps = ujson.dumps

    def fast_dumps(value: Any) -> str:
        text: str = ujson_dumps(value, ensure_ascii=True, escape_forward_slashes=False, separators=(", ", ": "),
                                allow_nan=False)
        if "\x7f" in text or _ONE_DIGIT_EXPONENT.search(text):  # the regex finds "e-" faster than `in`
            return stdlib_dumps(value)  # see the module docstring: these are written differently
        return text

    return fast_dumps


_NOT_CHOSEN: Any = object()
_fast: Dumps | None = _NOT_CHOSEN
ENCODER: str = "json"
"""The encoder in use once it was chosen (:func:`encoder_name` tells at any time):
``"ujson"`` (the ``[fast]`` extra) or ``"json"`` (the standard library)."""


def fast_dumps() -> Dumps | None:
    """ujson's encoder when it is the one in use (held to ``json.dumps``'s bytes), else None.
    Chosen on first use: importing ujson waits until something is encoded."""
    global _fast, ENCODER
    if _fast is _NOT_CHOSEN:
        _fast = _load_ujson()
        ENCODER = "json" if _fast is None else "ujson"
    return _fast


def encoder_name() -> str:
    """The encoder this process uses: ``"ujson"`` or ``"json"``."""
    fast_dumps()
    return ENCODER


def variable_problem() -> str | None:
    """Why the value of :data:`ENCODER_VARIABLE` is ignored, or None when it is not."""
    value = os.environ.get(ENCODER_VARIABLE, "")
    if value.strip().lower() in KNOWN_VALUES:
        return None
    return (f"{ENCODER_VARIABLE}={value!r} is not one of json, stdlib or ujson: it is ignored "
            "(ujson when installed, else the standard library)")


def dumps(value: Any) -> str:
    """``json.dumps(value)`` (but ``allow_nan=False``) with the encoder in use."""
    return (fast_dumps() or stdlib_dumps)(value)


def join(bodies: Sequence[bytes]) -> bytes:
    """The body of a list of already encoded values: ``json.dumps`` of the list, as bytes."""
    return b"[" + b", ".join(bodies) + b"]"


PIECE_BYTES = 256 * 1024
"""A body larger than this is sent in pieces of about this size (see :class:`JoinedBody`)."""


class JoinedBody:
    """The bytes of :func:`join`, made a piece of about :data:`PIECE_BYTES` at a time while
    they are sent, so a large request never holds a second copy of its events. ``requests``
    sends it with its length as ``Content-Length``; it can be iterated again (a new request)."""

    __slots__ = ("bodies", "size")

    def __init__(self, bodies: Sequence[bytes], size: int) -> None:
        self.bodies = bodies
        self.size = size
        """``len(join(bodies))``."""

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        bodies, start, piece, last = self.bodies, 0, 0, len(self.bodies)
        for end, body in enumerate(bodies, 1):
            piece += len(body) + 2
            if piece >= PIECE_BYTES or end == last:
                text = b", ".join(bodies[start:end])
                yield (b"[" if start == 0 else b", ") + text + (b"]" if end == last else b"")
                start, piece = end, 0
        if not bodies:
            yield b"[]"


def body_of(bodies: Sequence[bytes], size: int) -> bytes | JoinedBody:
    """What to send for these encoded values (``size``: the length of their :func:`join`): the
    joined bytes, or for a large body a :class:`JoinedBody` that joins them piece by piece."""
    return join(bodies) if size <= PIECE_BYTES else JoinedBody(bodies, size)

