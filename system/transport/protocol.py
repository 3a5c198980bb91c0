"""The msgpack codec of a rollout group (schema: `system.transport.schema`).

On the wire a `RolloutGroup` is a single msgpack map; token ids travel as packed little-endian
int32, log-probs as float32, frame indices as int32 and timestamps as float64, all samples'
arrays concatenated, so encoding and decoding cost a handful of memory copies rather than a
Python loop over tokens. Nothing on the wire is ever unpickled. `decode_group` trusts nothing:
it checks the size cap, the schema version, every field's type, array lengths, finiteness and
UTF-8, and raises `ProtocolError` naming the offending field.
"""

from __future__ import annotations

import math
import struct
from dataclasses import fields
from itertools import chain
from typing import Any

import msgpack
import numpy as np

from system.transport.schema import (
    DEFAULT_MAX_BYTES,
    FRAMES_DTYPE,
    IDS_DTYPE,
    LOGPROBS_DTYPE,
    SCHEMA_VERSION,
    TIMES_DTYPE,
    ImageRef,
    ProtocolError,
    RolloutGroup,
    RolloutSample,
    VisionRef,
    as_array,
    check_components,
    check_float,
    check_str,
    check_version_starts,
)

__all__ = [
    "ImageRef",
    "ProtocolError",
    "RolloutGroup",
    "RolloutSample",
    "VisionRef",
    "decode_group",
    "encode_group",
]


def encode_group(group: RolloutGroup, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """msgpack bytes of `group`; ProtocolError when they exceed `max_bytes`."""
    samples = group.samples
    wire = {
        "schema": SCHEMA_VERSION,
        "run_id": group.run_id,
        "group_id": group.group_id,
        "record_id": group.record_id,
        "weight_version": group.weight_version,
        "created_at": group.created_at,
        "finished_at": group.finished_at,
        "prompt_ids": memoryview(group.prompt_ids),
        "vision": None if group.vision is None else _encode_vision(group.vision),
        "images": [[i.path, i.height, i.width, i.content_hash] for i in group.images],
        "completion_lens": _pack_ints([len(s.completion_ids) for s in samples]),
        "completion_ids": b"".join([memoryview(s.completion_ids) for s in samples]),
        "logprobs": b"".join([memoryview(s.logprobs) for s in samples]),
        "rewards": [s.reward for s in samples],
        "reward_components": [s.reward_components for s in samples],
        "finish_reasons": [s.finish_reason for s in samples],
        "version_starts": [[x for pair in s.version_starts for x in pair] for s in samples],
        "problem_type": group.problem_type,
        "answer": group.answer,
        "stage": group.stage,
        "meta": group.meta,
    }
    data = msgpack.packb(wire, use_bin_type=True)
    if len(data) > max_bytes:
        raise ProtocolError("group", f"encodes to {len(data)} bytes, over the cap of {max_bytes}")
    return data


def _pack_ints(values: tuple[int, ...] | list[int]) -> bytes:
    # struct is several times faster than numpy for these short sequences; the bytes are the
    # same (<i4), and struct.error cannot happen: the dataclasses checked the range.
    return struct.pack(f"<{len(values)}i", *values)


def _encode_vision(ref: VisionRef) -> dict[str, Any]:
    return {
        "path": ref.path,
        "frame_indices": _pack_ints(ref.frame_indices),
        "height": ref.height,
        "width": ref.width,
        "fps": ref.fps,
        "timestamps": struct.pack(f"<{len(ref.timestamps)}d", *ref.timestamps),
        "content_hash": ref.content_hash,
        "start": ref.start,
        "end": ref.end,
    }


# Wire keys follow the dataclass fields; samples travel as parallel per-group arrays and lists.
_SAMPLE_KEYS = ("completion_lens", "completion_ids", "logprobs", "rewards", "reward_components")
_GROUP_KEYS = frozenset(
    {"schema", *_SAMPLE_KEYS, "finish_reasons", "version_starts"}
    | {f.name for f in fields(RolloutGroup)} - {"samples"}
)
_VISION_KEYS = frozenset(f.name for f in fields(VisionRef))


def decode_group(
    data: bytes | bytearray | memoryview, max_bytes: int = DEFAULT_MAX_BYTES
) -> RolloutGroup:
    """The RolloutGroup in `data`; ProtocolError naming the field when anything is off."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("payload", f"must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ProtocolError("payload", f"is {len(data)} bytes, over the cap of {max_bytes}")
    wire = _unpack(data)
    _check_keys(wire, _GROUP_KEYS, "group")
    version = wire["schema"]
    if version != SCHEMA_VERSION or type(version) is not int:
        raise ProtocolError(
            "schema", f"version {version!r} is not {SCHEMA_VERSION}, the one this reader knows"
        )
    samples = _decode_samples(wire)
    vision = wire["vision"]
    if vision is not None:
        vision = _decode_vision(vision)
    return RolloutGroup(
        run_id=wire["run_id"],
        group_id=wire["group_id"],
        record_id=wire["record_id"],
        weight_version=wire["weight_version"],
        created_at=wire["created_at"],
        finished_at=wire["finished_at"],
        prompt_ids=_frombuffer(wire["prompt_ids"], IDS_DTYPE, "prompt_ids"),
        vision=vision,
        images=_decode_images(wire["images"]),
        samples=samples,
        problem_type=wire["problem_type"],
        answer=wire["answer"],
        stage=wire["stage"],
        meta=wire["meta"],
    )


def _unpack(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    def no_ext(code: int, _payload: bytes) -> None:
        raise ProtocolError("payload", f"msgpack extension type {code} is not part of the schema")

    try:
        wire = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=no_ext)
    except ProtocolError:
        raise
    except UnicodeDecodeError as exc:
        raise ProtocolError("payload", f"a string is not valid UTF-8 ({exc.reason})") from None
    except msgpack.StackError:
        raise ProtocolError("payload", "nested too deeply") from None
    except msgpack.ExtraData:
        raise ProtocolError(
            "payload", "trailing bytes after the message (not a msgpack group)"
        ) from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError("payload", f"not valid msgpack: {exc}") from None
    if type(wire) is not dict:
        raise ProtocolError("payload", f"must be a msgpack map, got {type(wire).__name__}")
    return wire


def _check_keys(wire: dict[str, Any], expected: frozenset[str], name: str) -> None:
    keys = wire.keys()
    if keys != expected:
        missing = sorted(expected - keys)
        extra = sorted(str(k) for k in keys - expected)
        if missing:
            raise ProtocolError(
                f"{name}.{missing[0]}",
                f"missing (also missing: {missing[1:]})" if missing[1:] else "missing",
            )
        raise ProtocolError(f"{name}.{extra[0]}", "unknown field for this schema version")


def _frombuffer(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    if type(value) is not bytes:
        raise ProtocolError(name, f"must be packed binary, got {type(value).__name__}")
    if len(value) % dtype.itemsize:
        raise ProtocolError(
            name, f"{len(value)} bytes is not a whole number of {dtype.itemsize}-byte items"
        )
    return np.frombuffer(value, dtype)


def _check_list(value: Any, name: str, length: int) -> list[Any]:
    if type(value) is not list:
        raise ProtocolError(name, f"must be a list, got {type(value).__name__}")
    if len(value) != length:
        raise ProtocolError(name, f"has {len(value)} entries for {length} samples")
    return value


# Slot setters of RolloutSample: the decoder builds samples through them, skipping the frozen
# __setattr__ as object.__setattr__ would, at half its cost.
_SET_SAMPLE = tuple(
    RolloutSample.__dict__[f].__set__
    for f in (
        "completion_ids", "logprobs", "reward", "reward_components", "finish_reason",
        "version_starts",
    )
)  # fmt: skip


def _decode_samples(wire: dict[str, Any]) -> tuple[RolloutSample, ...]:
    lens = _frombuffer(wire["completion_lens"], IDS_DTYPE, "completion_lens").tolist()
    ids = as_array(
        _frombuffer(wire["completion_ids"], IDS_DTYPE, "completion_ids"),
        IDS_DTYPE,
        "completion_ids",
    )
    logprobs = as_array(
        _frombuffer(wire["logprobs"], LOGPROBS_DTYPE, "logprobs"), LOGPROBS_DTYPE, "logprobs"
    )
    count = len(lens)
    if count == 0:
        raise ProtocolError("completion_lens", "a group needs at least one sample")
    if min(lens) < 0 or sum(lens) != len(ids):
        raise ProtocolError(
            "completion_lens", f"lengths do not add up to the {len(ids)} completion ids"
        )
    if len(logprobs) != len(ids):
        raise ProtocolError(
            "logprobs", f"has {len(logprobs)} entries but completion_ids has {len(ids)}"
        )
    rewards = _check_list(wire["rewards"], "rewards", count)
    components = _check_list(wire["reward_components"], "reward_components", count)
    reasons = _check_list(wire["finish_reasons"], "finish_reasons", count)
    spans = _check_list(wire["version_starts"], "version_starts", count)
    if not _plain_scores(rewards, components, reasons):
        # Slow path, only to name the bad field precisely.
        for i in range(count):
            check_float(rewards[i], f"rewards[{i}]")
            check_components(components[i], f"reward_components[{i}]")
            check_str(reasons[i], f"finish_reasons[{i}]")
    samples = []
    offset = 0
    new = object.__new__
    set_ids, set_logprobs, set_reward, set_components, set_reason, set_spans = _SET_SAMPLE
    for i, n in enumerate(lens):
        # Everything was checked once for the whole group above: build without re-checking.
        sample = new(RolloutSample)
        end = offset + n
        set_ids(sample, ids[offset:end])
        set_logprobs(sample, logprobs[offset:end])
        set_reward(sample, rewards[i])
        set_components(sample, components[i])
        set_reason(sample, reasons[i])
        flat = spans[i]
        if type(flat) is not list or (flat and len(flat) % 2):
            raise ProtocolError(f"version_starts[{i}]", "must be a flat list of (version, start)")
        set_spans(
            sample,
            check_version_starts(
                list(zip(flat[::2], flat[1::2], strict=True)), n, f"version_starts[{i}]"
            )
            if flat
            else (),
        )
        samples.append(sample)
        offset = end
    return tuple(samples)


def _plain_scores(rewards: list[Any], components: list[Any], reasons: list[Any]) -> bool:
    """Fast check that rewards are finite floats, components str -> finite float, reasons str."""
    for c in components:
        if type(c) is not dict:
            return False
    values = [*rewards, *chain.from_iterable(map(dict.values, components))]
    plain = (
        set(map(type, values)) <= _FLOAT
        and set(map(type, chain.from_iterable(components))) <= _STR
        and set(map(type, reasons)) <= _STR
    )
    # NaN and inf propagate through the sum; finite values whose sum overflows also land on
    # the slow path, which judges each value.
    return plain and math.isfinite(sum(values))


_FLOAT = frozenset({float})
_STR = frozenset({str})


def _decode_images(value: Any) -> tuple[ImageRef, ...]:
    if type(value) is not list:
        raise ProtocolError("images", f"must be a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if type(item) is not list or len(item) != 4:
            raise ProtocolError(f"images[{i}]", "must be [path, height, width, content_hash]")
        out.append(ImageRef(*item))
    return tuple(out)


def _decode_vision(value: Any) -> VisionRef:
    if type(value) is not dict:
        raise ProtocolError("vision", f"must be a map or nil, got {type(value).__name__}")
    _check_keys(value, _VISION_KEYS, "vision")
    return VisionRef(
        path=value["path"],
        frame_indices=_frombuffer(value["frame_indices"], FRAMES_DTYPE, "vision.frame_indices"),
        height=value["height"],
        width=value["width"],
        fps=value["fps"],
        timestamps=_frombuffer(value["timestamps"], TIMES_DTYPE, "vision.timestamps"),
        content_hash=value["content_hash"],
        start=value["start"],
        end=value["end"],
    )
