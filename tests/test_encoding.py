"""The wire bytes: the official client's json.dumps output, with the standard library or ujson."""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import pytest

from optimizely_odp_ext import encoding


def random_scalar(rng: random.Random) -> Any:
    kind = rng.randrange(8)
    if kind == 0:
        value = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        return value if math.isfinite(value) else 0.5
    if kind == 1:
        return rng.choice([1e-7, 2.5e-5, 1e16, 1e22, -0.0, 0.1, 1 / 3, 5e-324, 1.7976931348623157e308, 123e-20])
    if kind == 2:
        return rng.choice([0, -1, 2**53 + 1, 2**64, -(2**70), 10**40])
    if kind == 3:
        return rng.choice([True, False, None])
    alphabet = [rng.randrange(0, 0x80), rng.randrange(0x80, 0xD800), rng.randrange(0xE000, 0x110000), 0x7F, 0x2028]
    return "".join(chr(rng.choice(alphabet)) for _ in range(rng.randrange(0, 12)))


def random_event(rng: random.Random) -> dict[str, Any]:
    data = {f"k{i}-{random_scalar(rng)!s}"[:20]: random_scalar(rng) for i in range(rng.randrange(0, 8))}
    return {"type": "fullstack", "action": str(random_scalar(rng)), "identifiers": {"fs_user_id": "é-ü-😀"},
            "data": {"idempotence_id": "00000000-0000-4000-8000-000000000000", **data}}


EVENTS = [random_event(random.Random(seed)) for seed in range(3000)]


def test_an_event_is_json_dumps_of_it_and_a_batch_is_json_dumps_of_the_list() -> None:
    for event in EVENTS[:200]:
        assert encoding.dumps(event).encode() == json.dumps(event).encode()
    assert encoding.join([encoding.dumps(event).encode() for event in EVENTS]) == json.dumps(EVENTS).encode()


def test_the_standard_librarys_encoder_built_once_writes_what_json_dumps_writes() -> None:
    for event in EVENTS:
        assert encoding.stdlib_dumps(event) == json.dumps(event), event
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        encoding.stdlib_dumps({"data": object()})


def test_a_body_joined_a_piece_at_a_time_is_the_joined_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [json.dumps(event).encode() for event in EVENTS[:300]]
    for count in (0, 1, 2, 7, 300):
        joined = encoding.join(parts[:count])
        assert joined == json.dumps(EVENTS[:count]).encode()
        for piece in (1, 150, 4096, encoding.PIECE_BYTES):
            monkeypatch.setattr(encoding, "PIECE_BYTES", piece)
            body = encoding.body_of(parts[:count], len(joined))
            pieces = [body] if isinstance(body, bytes) else list(body)
            assert b"".join(pieces) == joined and len(body) == len(joined), (count, piece)
            if count >= 7 and piece < len(joined) // 2:
                assert len(pieces) > 1, "sent in pieces, not one copy"


def test_the_fast_encoder_writes_the_same_bytes_as_the_standard_library() -> None:
    pytest.importorskip("ujson", reason="the [fast] extra is not installed")
    fast = encoding._load_ujson()
    assert fast is not None
    for event in EVENTS:
        assert fast(event) == json.dumps(event), event
    assert fast(EVENTS) == json.dumps(EVENTS)


def test_the_encoder_in_use_is_named() -> None:
    try:
        import ujson  # noqa: F401
    except ImportError:
        assert encoding.encoder_name() == "json"
    else:
        assert encoding.encoder_name() in ("ujson", "json")  # "json" when OPTIMIZELY_ODP_ENCODER=json
