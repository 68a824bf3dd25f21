"""An ODP event, and building one from a ``send_odp_event`` call.

Building validates and copies the caller's input, so the caller's dicts are never
mutated and later changes to them do not reach the event. It runs on the caller's
thread and encodes the identifiers and data once: for plain data (string keys; str,
int, float, bool or None values) the encoder's own refusals and a look at its output
are the checks (NaN, an infinity or an integer too long to print make it raise; a
surrogate shows as a ``\\ud`` escape), and only then is each value examined, to name the problem.
The event's JSON (:meth:`OdpEvent.to_json`) is made from those pieces and a new idempotence id in
one step, the bytes ``json.dumps`` writes for :func:`wire_dict`. Like the official client, an event
gets its idempotence id when it is made, and keeps it.

The fidelity rule: what optimizely-sdk 5.x accepts and sends, this accepts and encodes
to the same bytes (apart from the idempotence id). Refused, each with its reason, is
only what the official client drops too (empty action, empty identifiers, data values
that are not scalars), what makes it raise (identifier keys that are not strings before
the user id's key, data that is truthy and not a mapping), what cannot be valid JSON on
the wire (NaN and infinities as values, integers too long to print, strings with lone
surrogates, objects JSON cannot encode), and what ODP's events API refuses on the wire:
an action or a type that is not a string, a list or dict as an identifier value. Log
lines start with the official client's wording where it has one.
"""

from __future__ import annotations

import json
import json.encoder
import math
import os
import random
import re
import sys
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Union

from optimizely_odp_ext import encoding
from optimizely_odp_ext.compat import SDK_VERSION
from optimizely_odp_ext.integration import OdpIntegration
from optimizely_odp_ext.result import DiscardReason

Scalar = Union[str, int, float, bool, None]
OdpData = dict[str, Scalar]

DEFAULT_EVENT_TYPE = "fullstack"
USER_ID_KEY = "fs_user_id"
_USER_ID_ALIASES = ("fs_user_id", "fs-user-id")
_SCALARS = (str, int, float, bool, type(None))
_ALIAS_LENGTH = len(USER_ID_KEY)
_SAFE_INT_BITS = 2_000
"""Integers up to this many bits print in fewer than 640 digits, the lowest limit Python
allows for ``sys.set_int_max_str_digits``; only longer ones are checked precisely."""
_LONE_SURROGATE = "[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]"
"""A surrogate not paired as UTF-16; compiled on first use (by ``re``'s cache), not at import."""

_NO_DATA: Mapping[str, Scalar] = MappingProxyType({})
_STR_TYPE = frozenset((str,))
_PLAIN_TYPES = frozenset((str, int, float, bool, type(None)))
_DEFAULT_DATA: Mapping[str, str] = MappingProxyType(
    {"data_source_type": "sdk", "data_source": "python-sdk", "data_source_version": SDK_VERSION})
"""The default data after the idempotence id, as the official client sends it."""
_DEFAULT_DATA_KEYS = frozenset(("idempotence_id", *_DEFAULT_DATA))
_DEFAULT_DATA_JSON = json.dumps(dict(_DEFAULT_DATA))[1:-1]
"""The default data after the idempotence id, as JSON object members."""
_json_string = json.encoder.encode_basestring_ascii

INVALID_ACTION_EMPTY = "ODP action is not valid (cannot be empty)."
"""optimizely-sdk 5.x's wording, kept as the start of our lines."""
INVALID_IDENTIFIERS_EMPTY = "ODP events must have at least one key-value pair in identifiers."
INVALID_DATA = "ODP data is not valid."
_IDS_AT_ONCE = 64
"""Made in one call of 10 µs (256 at once cost 0.08 µs less each, but the call's 21 µs showed in
the callers' 99.9th percentile)."""
_ID_SLICES = tuple(slice(start, start + 36) for start in range(0, 36 * _IDS_AT_ONCE, 36))
_DASHES = frozenset((8, 13, 18, 23))
_VARIANT_DIGIT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
_unused_ids: Iterator[str] = iter(())
_id_random: random.Random | None = None
"""This module's own generator, seeded from ``os.urandom`` on first use and again in a forked child:
``random.seed()`` in the application does not touch it. It holds the GIL while it works;
``os.urandom`` releases it, and from 8 busy threads a caller then waited up to 276 ms to get it
back."""


def new_idempotence_id() -> str:
    """A random (version 4) UUID string, as ``str(uuid.uuid4())`` but for 0.2 µs, not 0.5: they
    are made :data:`_IDS_AT_ONCE` at a time, and each is cut from their text when it is used.
    Thread-safe (taking the next one is one C call); a forked child forgets
    the parent's unused ones."""
    global _unused_ids
    try:
        return next(_unused_ids)
    except StopIteration:
        ids = map(_make_ids(_IDS_AT_ONCE).__getitem__, _ID_SLICES)
        first = next(ids)
        _unused_ids = ids
        return first


def _make_ids(count: int) -> str:
    """The text of ``count`` version 4 UUID strings, one after another, written a column at a
    time: every id's first character, then every id's second, and so on (one slice assignment
    each, not one string per id)."""
    global _id_random
    if _id_random is None:
        _id_random = random.Random()  # seeded from os.urandom
    digits = _id_random.getrandbits(128 * count).to_bytes(16 * count, "big").hex().encode()  # 32 per id, 31 used
    ids = bytearray(b"-" * (36 * count))
    column = 0
    for position in range(36):
        if position in _DASHES:
            continue
        if position == 14:  # the version
            ids[14::36] = b"4" * count
            continue
        taken = digits[column::32]
        column += 1
        ids[position::36] = taken.translate(_VARIANT_DIGIT) if position == 19 else taken  # 19: the variant
    return ids.decode()


def _forget_unused_ids() -> None:
    global _unused_ids, _id_random
    _unused_ids, _id_random = iter(()), None


if hasattr(os, "register_at_fork"):  # a child must not send the ids its parent will send
    os.register_at_fork(after_in_child=_forget_unused_ids)


def wire_data(data: OdpData | None) -> OdpData:
    """The ``data`` object as the official client sends it: the default data (a new
    idempotence id each call), then the caller's on top (same keys keep their place)."""
    return {"idempotence_id": new_idempotence_id(), **_DEFAULT_DATA, **(data or _NO_DATA)}


def wire_dict(type: str, action: str, identifiers: dict[str, Any], data: OdpData | None) -> dict[str, Any]:
    """One event as ODP receives it, in the official client's key order (``identifiers`` is
    used as it is, not copied: it is the event's own copy)."""
    return {"type": type, "action": action, "identifiers": identifiers, "data": wire_data(data)}


class InvalidEventError(ValueError):
    """The input of ``send_odp_event`` is not a valid ODP event."""

    def __init__(self, reason: DiscardReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class OdpEvent:
    """One accepted ODP event, bound to the integration that was active when accepted.

    Thread-safe to read; its fields are not changed after construction except
    ``integration`` (set once when an event held before the datafile was ready is
    released) and its JSON, kept by :meth:`to_json`. An event :func:`build_event` made has its
    JSON, and so its idempotence id, from the start.
    """

    __slots__ = ("_json", "accepted_at", "action", "data", "identifiers", "integration", "type")

    def __init__(
        self,
        type: str,
        action: str,
        identifiers: dict[str, Any],
        data: OdpData | None = None,
        integration: OdpIntegration | None = None,
        accepted_at: float | None = None,
    ) -> None:
        self.type = type
        self.action = action
        self.identifiers = identifiers
        self.data = data
        self.integration = integration
        self.accepted_at = time.monotonic() if accepted_at is None else accepted_at
        self._json: bytes | None = None

    def wire_data(self) -> OdpData:
        """The ``data`` object as sent: the default data, then the caller's on top."""
        return wire_data(self.data)

    def to_dict(self) -> dict[str, Any]:
        """The event as ODP receives it (a new idempotence id each call: prefer :meth:`to_json`)."""
        return wire_dict(self.type, self.action, self.identifiers, self.data)

    def to_json(self) -> bytes:
        """The event's JSON, ``json.dumps`` of :meth:`to_dict` as bytes, made once: its idempotence
        id stays the same across retries."""
        if self._json is None:
            self._json = encoding.stdlib_dumps(self.to_dict()).encode()
        return self._json

    def __repr__(self) -> str:
        return f"OdpEvent(type={self.type!r}, action={self.action!r})"


def build_event(
    action: object,
    identifiers: object,
    type: object = DEFAULT_EVENT_TYPE,
    data: object = None,
) -> OdpEvent:
    """Validate a ``send_odp_event`` call and build the event from copies of its input.

    Non-blocking and thread-safe. Raises :class:`InvalidEventError` naming the problem.
    """
    if action.__class__ is not str or not action or not action.isascii():
        _check_action(action)
    if type is None or type == "":
        type = DEFAULT_EVENT_TYPE
    elif type.__class__ is not str or not type.isascii():
        _check_type(type)
    identifiers = _copy_identifiers(identifiers)
    data, data_json = _copy_data(data)
    event = OdpEvent(type, action, identifiers, data)  # type: ignore[arg-type]  # both checked above
    if data is None or data.keys().isdisjoint(_DEFAULT_DATA_KEYS):  # else to_json encodes the merged data
        event._json = _event_json(event.type, event.action, identifiers, data_json)
    elif _has_non_finite_key(data) or _has_non_finite_key(identifiers):  # to_json's encoder would refuse
        event._json = json.dumps(event.to_dict()).encode()  # checked: only keys can be NaN or infinite
    return event


def _event_json(type: str, action: str, identifiers: dict[str, Any], data_json: str) -> bytes:
    """The bytes of ``json.dumps(wire_dict(...))`` with a new idempotence id, from the JSON of the
    caller's data (empty when none), which has none of the default keys."""
    try:
        key, value = next(iter(identifiers.items()))  # there is one at least (checked)
        if len(identifiers) == 1 and value.__class__ is str:  # most events: fs_user_id; the key is a str (checked)
            identifiers_json = f"{{{_json_string(key)}: {_json_string(value)}}}"  # 0.12 µs; the encoder's call 0.3
        else:
            identifiers_json = _checked_dumps(identifiers)  # a few keys: see FAST_FROM_KEYS
    except (TypeError, ValueError, OverflowError, RecursionError) as error:  # checked: only a bug gets here
        raise InvalidEventError(DiscardReason.INVALID_IDENTIFIERS,
                                f"ODP identifiers are not valid (they cannot be encoded as JSON: {error}).") from None
    type_json, action_json, idempotence_id = _json_string(type), _json_string(action), new_idempotence_id()
    # The caller's members follow the default data, in place of their "{" (one copy of them).
    separator, data_rest = (", ", data_json[1:]) if data_json else ("", "}")
    # An f-string: about half the CPU of a %-template or a join of the same pieces.
    return (f'{{"type": {type_json}, "action": {action_json}, "identifiers": {identifiers_json}, "data": '
            f'{{"idempotence_id": "{idempotence_id}", {_DEFAULT_DATA_JSON}{separator}{data_rest}}}').encode()


def _check_action(action: object) -> None:
    if action is None or action == "":
        raise InvalidEventError(DiscardReason.INVALID_ACTION, INVALID_ACTION_EMPTY)
    problem = _text_problem(action)
    if problem:
        raise InvalidEventError(DiscardReason.INVALID_ACTION, f"ODP action is not valid ({problem}).")


def _check_type(type: object) -> None:
    problem = _text_problem(type)
    if problem:
        raise InvalidEventError(DiscardReason.INVALID_TYPE, f"ODP event type is not valid ({problem}).")


def _text_problem(value: object) -> str | None:
    """Why ``value`` cannot be an action or a type: ODP takes a non-empty string there."""
    if not isinstance(value, str):
        return f"must be a string, not {_kind(value)}"
    return _json_scalar_problem(value)


def _copy_identifiers(identifiers: object) -> dict[str, Any]:
    if identifiers.__class__ is not dict and not isinstance(identifiers, dict):
        raise InvalidEventError(DiscardReason.INVALID_IDENTIFIERS,
                                f"{INVALID_IDENTIFIERS_EMPTY} (identifiers must be a dict, not {_kind(identifiers)})")
    if not identifiers:
        raise InvalidEventError(DiscardReason.INVALID_IDENTIFIERS, INVALID_IDENTIFIERS_EMPTY)
    copy = dict(identifiers)  # checked and kept: what is sent is what was checked
    user_id_alias: str | None = None
    for key, value in copy.items():  # the common case (ASCII strings) costs two type checks
        if key.__class__ is not str or not key.isascii():
            _check_identifier_key(key, after_user_id=user_id_alias is not None)
        if value.__class__ is str:
            if not value.isascii():
                try:
                    value.encode()
                except UnicodeEncodeError:
                    _check_identifier_value(key, value)
        else:
            _check_identifier_value(key, value)
        if user_id_alias is None and len(key) == _ALIAS_LENGTH and key.lower() in _USER_ID_ALIASES:
            user_id_alias = key
    if user_id_alias is not None and user_id_alias != USER_ID_KEY:
        # The same rename as optimizely-sdk 5.x (the first alias becomes fs_user_id), on our copy.
        copy[USER_ID_KEY] = copy.pop(user_id_alias)
    return copy


def _check_identifier_key(key: object, after_user_id: bool) -> None:
    """A key that is not a string makes the official client raise while it looks for the user id
    (``key.lower()``); after it, it is not looked at, and ``json.dumps`` turns a scalar into a
    string as it does a data key's."""
    if not isinstance(key, str):
        if after_user_id:
            problem = _data_key_problem(key)
            if problem is None:
                return
            raise InvalidEventError(DiscardReason.INVALID_IDENTIFIERS,
                                    f"ODP identifiers are not valid ({problem[0].lower()}{problem[1:]}).")
        raise InvalidEventError(DiscardReason.INVALID_IDENTIFIERS,
                                f"ODP identifiers are not valid (a key that is not a string: {_kind(key)}).")
    if _has_lone_surrogate(key):
        raise InvalidEventError(DiscardReason.INVALID_IDENTIFIERS,
                                f"ODP identifiers are not valid (the key {key!a} has a lone surrogate, "
                                "which is not valid Unicode).")


def _check_identifier_value(key: object, value: object) -> None:
    problem = _identifier_value_problem(value)
    if problem:
        raise InvalidEventError(DiscardReason.INVALID_IDENTIFIERS,
                                f"ODP identifiers are not valid (value of {key!a} {problem}).")


def _copy_data(data: object) -> tuple[OdpData | None, str]:
    """A copy of valid ``data`` (None when there is none) and its JSON (empty when none)."""
    if data is None:
        return None, ""
    if data.__class__ is not dict and not isinstance(data, dict):
        data = _mapping_copy(data)
    if not data:
        return None, ""
    copy = dict(data)  # encoded and kept: what is sent is what was checked
    text = _plain_json(copy)
    if text:
        return copy, text
    _check_data(copy)  # names what cannot be sent; else the encoder only found it suspicious
    try:
        return copy, _checked_dumps(copy)
    except (TypeError, ValueError, OverflowError, RecursionError) as error:  # checked: only a bug gets here
        raise InvalidEventError(DiscardReason.INVALID_DATA,
                                f"{INVALID_DATA} It cannot be encoded as JSON ({error}).") from None


def _checked_dumps(checked: dict[Any, Any]) -> str:
    """The JSON of identifiers or data whose values were checked: ``json.dumps`` as the official
    client writes it. Only a key can then be NaN or an infinity, which the official client writes
    as the string ``"NaN"`` (valid JSON: a key is a string), where our encoders refuse it."""
    try:
        return encoding.stdlib_dumps(checked)
    except ValueError:
        if not _has_non_finite_key(checked):
            raise
        return json.dumps(checked)


def _has_non_finite_key(checked: dict[Any, Any]) -> bool:
    return any(key.__class__ is float and key - key != 0.0 for key in checked)  # inf - inf is nan


def _mapping_copy(data: object) -> dict[Any, Any]:
    """``data`` that is not a dict, taken as the official client takes it (``data or {}``, then its
    ``values()`` checked and ``dict.update``): empty when it is falsy (``[]``, ``""``, ``0``), a
    copy of a mapping (``UserDict``, ``MappingProxyType``); anything else is refused, where the
    official client raises."""
    try:
        if not data:
            return {}
        if callable(getattr(data, "values", None)) and callable(getattr(data, "keys", None)):
            mapping: Mapping[Any, Any] = data  # type: ignore[assignment]  # has keys() and values()
            return dict(mapping)
    except Exception:  # its __bool__, keys() or __getitem__ failed: refused below, as anything else
        pass
    raise InvalidEventError(DiscardReason.INVALID_DATA, f"{INVALID_DATA} It must be a dict, not {_kind(data)}.")


def _plain_json(data: dict[Any, Any]) -> str:
    """``data``'s JSON when encoding it shows that it holds only what can be sent, else "" (to be
    examined value by value).

    The standard library's encoder refuses NaN, the infinities, integers too long to print, keys
    that are not scalars and any value JSON cannot encode, without calling anything of the
    value's (dict subclasses aside: their ``items()``, hence the broad ``except``). Its output
    then shows the rest: no ``[`` and no ``{`` past the first means no nested list or object, no
    ``\\ud`` escape means no lone surrogate. ujson honours more (``Decimal``, ``__json__``,
    ``toDict``) and writes any key as its ``str()``, so it only encodes data whose keys are all
    ``str`` and values all plain ``str``, ``int``, ``float``, ``bool`` or ``None``.
    """
    fast = encoding.fast_dumps() if len(data) >= encoding.FAST_FROM_KEYS else None
    try:
        if fast and frozenset(map(type, data)) == _STR_TYPE and _PLAIN_TYPES.issuperset(map(type, data.values())):
            text = fast(data)
        else:
            text = encoding.stdlib_dumps(data)
    except Exception:  # whatever the reason, the value-by-value check names it
        return ""
    if "[" in text or text.find("{", 1) >= 0:
        return ""
    if "\\" in text and "\\ud" in text:  # a one-character search first: it is much faster
        return ""
    return text


def _check_data(data: dict[Any, Any]) -> None:
    """Raise :class:`InvalidEventError` naming what in ``data`` cannot be sent, if anything."""
    for key, value in data.items():  # the common cases cost a type check or two
        if key.__class__ is not str or not key.isascii():
            problem = _data_key_problem(key)
            if problem:
                raise InvalidEventError(DiscardReason.INVALID_DATA, f"{INVALID_DATA} {problem}.")
        kind = value.__class__
        if kind is str:
            if value.isascii():
                continue
            try:
                value.encode()
                continue
            except UnicodeEncodeError:
                pass
        elif kind is float:
            if value - value == 0.0:  # finite: inf - inf and nan - nan are nan
                continue
        elif kind is int:
            if value.bit_length() <= _SAFE_INT_BITS:
                continue
        elif kind is bool or value is None:
            continue
        if not isinstance(value, _SCALARS):
            raise InvalidEventError(
                DiscardReason.INVALID_DATA,
                f"{INVALID_DATA} Value of {key!a} is {_kind(value)}; "
                "only str, int, float, bool and None are allowed.")
        problem = _json_scalar_problem(value)
        if problem:
            raise InvalidEventError(DiscardReason.INVALID_DATA, f"{INVALID_DATA} Value of {key!a} {problem}.")


def _identifier_value_problem(value: object) -> str | None:
    """Why ``value`` cannot be an identifier value: one JSON scalar, as the official client
    sends it (a string, or a number, boolean or null as they are)."""
    if not isinstance(value, _SCALARS):
        return f"must be one value (str, int, float, bool or None), not {_kind(value)}"
    return _json_scalar_problem(value)


def _json_scalar_problem(value: object) -> str | None:
    """Why a str, int, float, bool or None cannot be encoded as valid JSON, or None."""
    if isinstance(value, str):
        if _has_lone_surrogate(value):
            return "has a lone surrogate, which is not valid Unicode"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return f"is {value}, which is not valid JSON"
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _SAFE_INT_BITS:
        try:
            int.__repr__(value)
        except ValueError:
            limit = getattr(sys, "get_int_max_str_digits", lambda: "the allowed")()
            return f"is an integer of more than {limit} digits, which JSON cannot encode here"
    return None


def _data_key_problem(key: object) -> str | None:
    """A data key is a string, or a scalar JSON turns into one (as the official client sends it)."""
    if isinstance(key, str):
        return "A key has a lone surrogate, which is not valid Unicode" if _has_lone_surrogate(key) else None
    if isinstance(key, float):
        return None  # NaN and the infinities too: json.dumps writes them as the keys "NaN", "Infinity"
    if key is None or isinstance(key, (int, bool)):
        problem = _json_scalar_problem(key)
        return f"The key {_kind(key)} {problem}" if problem else None
    return f"A key that is not a string: {_kind(key)}"


def _has_lone_surrogate(text: str) -> bool:
    """True when ``text`` has a surrogate code point not paired as UTF-16 (JSON's ``\\ud800``
    alone is rejected by strict parsers). Only non-ASCII text is looked at, and only text
    that UTF-8 refuses is searched."""
    if str.isascii(text):  # str's own methods: a subclass may override them
        return False
    try:
        str.encode(text, "utf-8")
    except UnicodeEncodeError:
        return re.search(_LONE_SURROGATE, text) is not None
    return False


def _kind(value: object) -> str:
    return "None" if value is None else type(value).__name__
