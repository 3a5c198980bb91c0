"""The wire schema of a rollout group and its msgpack codec.

A `RolloutGroup` is what a rollout actor publishes and a learner rank consumes: one prompt (its
token ids and a `VisionRef` that says how to re-decode the video — never the pixels) and the G
sampled completions with their behaviour log-probs, rewards and finish reasons. On the wire it
is a single msgpack map; token ids travel as packed little-endian int32, log-probs as float32,
frame indices as int32 and timestamps as float64, all samples' arrays concatenated, so encoding
and decoding cost a handful of memory copies rather than a Python loop over tokens. Nothing on
the wire is ever unpickled. `decode_group` trusts nothing: it checks the size cap, the schema
version, every field's type, array lengths, finiteness and UTF-8, and raises `ProtocolError`
naming the offending field.
"""

from __future__ import annotations

import math
import struct
import uuid
from dataclasses import dataclass, field, fields
from itertools import chain
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

_INT32_MAX = 2**31 - 1
_IDS = np.dtype("<i4")
_LOGPROBS = np.dtype("<f4")
_FRAMES = np.dtype("<i4")
_TIMES = np.dtype("<f8")

Scalar = str | int | float | bool | None
_PLAIN_SCALARS = frozenset({str, int, float, bool})


class ProtocolError(ValueError):
    """A message that does not follow the schema; `field` names where it went wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# --------------------------------------------------------------------------- field checks


def _check_str(value: Any, name: str, *, empty: bool = True) -> str:
    if type(value) is not str:
        raise ProtocolError(name, f"must be a string, got {type(value).__name__}")
    if not empty and not value:
        raise ProtocolError(name, "must not be empty")
    return value


def _check_opt_str(value: Any, name: str) -> str | None:
    return None if value is None else _check_str(value, name)


def _check_int(value: Any, name: str, *, low: int = 0) -> int:
    if type(value) is not int:
        raise ProtocolError(name, f"must be an integer, got {type(value).__name__}")
    if value < low:
        raise ProtocolError(name, f"must be >= {low}, got {value}")
    return value


def _check_float(value: Any, name: str) -> float:
    # bool is an int subclass: a reward of True is a bug upstream, not a number.
    if type(value) not in (float, int):
        raise ProtocolError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ProtocolError(name, f"must be finite, got {value}")
    return float(value)


def _check_opt_float(value: Any, name: str) -> float | None:
    return None if value is None else _check_float(value, name)


def _as_array(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    """A read-only 1-D array of `dtype` holding valid values (a view when no conversion is
    needed): ids in [0, 2^31), floats finite."""
    if type(value) is np.ndarray and value.dtype == dtype and value.ndim == 1:
        arr = value  # the decoder's case: already the wire dtype
    else:
        arr = _convert(value, dtype, name)
    if dtype.kind == "i":
        if arr.size and arr.min() < 0:
            raise ProtocolError(name, f"values must lie in [0, {_INT32_MAX}]")
    # One sum screens for NaN and inf (they propagate through it) without a temporary; only
    # a non-finite sum, which finite values can also reach by overflowing, is looked at closely.
    elif not math.isfinite(np.add.reduce(arr)) and not np.isfinite(arr).all():
        raise ProtocolError(name, "holds a non-finite value (NaN or inf)")
    if arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


def _convert(value: Any, dtype: np.dtype, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ProtocolError(name, f"must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(dtype)
    if dtype.kind == "i":
        if arr.dtype.kind not in "iu":
            raise ProtocolError(name, f"must hold integers, got dtype {arr.dtype}")
        # Checked before narrowing, which would wrap silently.
        if arr.min() < 0 or arr.max() > _INT32_MAX:
            raise ProtocolError(name, f"values must lie in [0, {_INT32_MAX}]")
    elif arr.dtype.kind not in "fiu":
        raise ProtocolError(name, f"must hold numbers, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def _check_meta(value: Any, name: str) -> dict[str, Scalar]:
    if type(value) is not dict:
        raise ProtocolError(name, f"must be a map of str -> scalar, got {type(value).__name__}")
    for key, item in value.items():
        kind = type(item)
        if type(key) is str and (kind in _PLAIN_SCALARS or item is None):
            if kind is float and not math.isfinite(item):
                raise ProtocolError(f"{name}[{key!r}]", f"must be finite, got {item}")
            continue
        _check_str(key, f"{name} key")
        where = f"{name}[{key!r}]"
        if isinstance(item, dict | list | tuple | bytes | bytearray | np.ndarray):
            raise ProtocolError(
                where, "must be a scalar (str, int, float, bool, None); nesting is not allowed"
            )
        if type(item) is float and not math.isfinite(item):
            raise ProtocolError(where, f"must be finite, got {item}")
        if item is not None and type(item) not in (str, int, float, bool):
            raise ProtocolError(where, f"must be a scalar, got {type(item).__name__}")
    return value


def _check_components(value: Any, name: str) -> dict[str, float]:
    if type(value) is not dict:
        raise ProtocolError(name, f"must be a map of str -> number, got {type(value).__name__}")
    return {
        _check_str(k, f"{name} key"): _check_float(v, f"{name}[{k!r}]") for k, v in value.items()
    }


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True, slots=True)
class VisionRef:
    """How to re-decode the video of a prompt: the same frames at the same size, by reference."""

    path: str
    """Video file path (absolute, or as resolved by the producer) or URI."""
    frame_indices: tuple[int, ...]
    """Absolute frame indices in the file, in order."""
    height: int
    """Frame height after resizing, pixels."""
    width: int
    """Frame width after resizing, pixels."""
    fps: float
    """Native frame rate of the file."""
    timestamps: tuple[float, ...]
    """Presentation time (seconds) of each sampled frame, one per frame index."""
    content_hash: str
    """Hash of the decoded frames; a re-decode must reproduce it."""
    start: float | None = None
    """Start (seconds) of the span the frames were sampled from, if any."""
    end: float | None = None
    """End (seconds) of the span the frames were sampled from, if any."""

    def __post_init__(self) -> None:
        _check_str(self.path, "vision.path", empty=False)
        frames = tuple(_as_array(self.frame_indices, _FRAMES, "vision.frame_indices").tolist())
        times = tuple(_as_array(self.timestamps, _TIMES, "vision.timestamps").tolist())
        if len(times) != len(frames):
            raise ProtocolError(
                "vision.timestamps",
                f"has {len(times)} entries but frame_indices has {len(frames)}; give one per frame",
            )
        object.__setattr__(self, "frame_indices", frames)
        object.__setattr__(self, "timestamps", times)
        _check_int(self.height, "vision.height", low=1)
        _check_int(self.width, "vision.width", low=1)
        object.__setattr__(self, "fps", _check_float(self.fps, "vision.fps"))
        if self.fps <= 0:
            raise ProtocolError("vision.fps", f"must be > 0, got {self.fps}")
        _check_str(self.content_hash, "vision.content_hash")
        start = _check_opt_float(self.start, "vision.start")
        end = _check_opt_float(self.end, "vision.end")
        if start is not None and end is not None and end < start:
            raise ProtocolError("vision.end", f"must be >= start ({start}), got {end}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)


@dataclass(frozen=True, slots=True, eq=False)
class RolloutSample:
    """One sampled completion of a group: tokens, behaviour log-probs, reward."""

    completion_ids: np.ndarray
    """Completion token ids, int32 [T]."""
    logprobs: np.ndarray
    """Log-probability of each completion token under the behaviour policy, float32 [T]."""
    reward: float
    """Total reward."""
    reward_components: dict[str, float] = field(default_factory=dict)
    """Named parts of the reward (e.g. task, format), as the reward function reports them."""
    finish_reason: str = "stop"
    """Why generation ended (stop, length, ...)."""

    def __post_init__(self) -> None:
        ids = _as_array(self.completion_ids, _IDS, "completion_ids")
        logprobs = _as_array(self.logprobs, _LOGPROBS, "logprobs")
        if len(logprobs) != len(ids):
            raise ProtocolError(
                "logprobs", f"has {len(logprobs)} entries but completion_ids has {len(ids)}"
            )
        object.__setattr__(self, "completion_ids", ids)
        object.__setattr__(self, "logprobs", logprobs)
        object.__setattr__(self, "reward", _check_float(self.reward, "reward"))
        components = _check_components(self.reward_components, "reward_components")
        object.__setattr__(self, "reward_components", components)
        _check_str(self.finish_reason, "finish_reason")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RolloutSample):
            return NotImplemented
        return (
            np.array_equal(self.completion_ids, other.completion_ids)
            and np.array_equal(self.logprobs, other.logprobs)
            and self.reward == other.reward
            and self.reward_components == other.reward_components
            and self.finish_reason == other.finish_reason
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True, eq=False)
class RolloutGroup:
    """G completions of one prompt, scored: the unit a learner rank consumes."""

    run_id: str
    """Run the group belongs to."""
    group_id: str
    """UUID of the group; the learner skips group ids it has already applied."""
    record_id: str
    """Dataset record (prompt) id."""
    weight_version: int
    """Policy weight version that generated the samples."""
    created_at: float
    """Unix time generation started."""
    finished_at: float
    """Unix time the group was scored."""
    prompt_ids: np.ndarray
    """Prompt token ids as the engine saw them, int32 [P]."""
    vision: VisionRef | None
    """The video of the prompt, by reference (None: text-only prompt)."""
    samples: tuple[RolloutSample, ...]
    """The G completions."""
    problem_type: str = ""
    """Task kind (multiple choice, numerical, temporal grounding, ...)."""
    answer: str = ""
    """Ground-truth answer, for the learner's logs and checks."""
    stage: str | None = None
    """Training stage that produced the group."""
    meta: dict[str, Scalar] = field(default_factory=dict)
    """Small extras, str -> scalar."""

    def __post_init__(self) -> None:
        _check_str(self.run_id, "run_id", empty=False)
        _check_str(self.group_id, "group_id", empty=False)
        try:
            uuid.UUID(self.group_id)
        except ValueError:
            raise ProtocolError("group_id", f"must be a UUID, got {self.group_id!r}") from None
        _check_str(self.record_id, "record_id")
        _check_int(self.weight_version, "weight_version")
        object.__setattr__(self, "created_at", _check_float(self.created_at, "created_at"))
        object.__setattr__(self, "finished_at", _check_float(self.finished_at, "finished_at"))
        object.__setattr__(self, "prompt_ids", _as_array(self.prompt_ids, _IDS, "prompt_ids"))
        if self.vision is not None and not isinstance(self.vision, VisionRef):
            raise ProtocolError(
                "vision", f"must be a VisionRef or None, got {type(self.vision).__name__}"
            )
        samples = tuple(self.samples)
        if not samples:
            raise ProtocolError("samples", "a group needs at least one sample")
        for i, sample in enumerate(samples):
            if not isinstance(sample, RolloutSample):
                raise ProtocolError(
                    f"samples[{i}]", f"must be a RolloutSample, got {type(sample).__name__}"
                )
        object.__setattr__(self, "samples", samples)
        _check_str(self.problem_type, "problem_type")
        _check_str(self.answer, "answer")
        _check_opt_str(self.stage, "stage")
        _check_meta(self.meta, "meta")

    @staticmethod
    def new_group_id() -> str:
        """A fresh random group id."""
        return str(uuid.uuid4())

    @property
    def rewards(self) -> np.ndarray:
        """The G total rewards, float64 [G]."""
        return np.array([s.reward for s in self.samples], dtype=np.float64)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RolloutGroup):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f), getattr(other, f))
            if f == "prompt_ids"
            else getattr(self, f) == getattr(other, f)
            for f in self.__dataclass_fields__
        )

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- the codec


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
        "completion_lens": _pack_ints([len(s.completion_ids) for s in samples]),
        "completion_ids": b"".join([memoryview(s.completion_ids) for s in samples]),
        "logprobs": b"".join([memoryview(s.logprobs) for s in samples]),
        "rewards": [s.reward for s in samples],
        "reward_components": [s.reward_components for s in samples],
        "finish_reasons": [s.finish_reason for s in samples],
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
    {"schema", *_SAMPLE_KEYS, "finish_reasons"}
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
        prompt_ids=_frombuffer(wire["prompt_ids"], _IDS, "prompt_ids"),
        vision=vision,
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
    for f in ("completion_ids", "logprobs", "reward", "reward_components", "finish_reason")
)


def _decode_samples(wire: dict[str, Any]) -> tuple[RolloutSample, ...]:
    lens = _frombuffer(wire["completion_lens"], _IDS, "completion_lens").tolist()
    ids = _as_array(
        _frombuffer(wire["completion_ids"], _IDS, "completion_ids"), _IDS, "completion_ids"
    )
    logprobs = _as_array(
        _frombuffer(wire["logprobs"], _LOGPROBS, "logprobs"), _LOGPROBS, "logprobs"
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
    if not _plain_scores(rewards, components, reasons):
        # Slow path, only to name the bad field precisely.
        for i in range(count):
            _check_float(rewards[i], f"rewards[{i}]")
            _check_components(components[i], f"reward_components[{i}]")
            _check_str(reasons[i], f"finish_reasons[{i}]")
    samples = []
    offset = 0
    new = object.__new__
    set_ids, set_logprobs, set_reward, set_components, set_reason = _SET_SAMPLE
    for i, n in enumerate(lens):
        # Everything was checked once for the whole group above: build without re-checking.
        sample = new(RolloutSample)
        end = offset + n
        set_ids(sample, ids[offset:end])
        set_logprobs(sample, logprobs[offset:end])
        set_reward(sample, rewards[i])
        set_components(sample, components[i])
        set_reason(sample, reasons[i])
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


def _decode_vision(value: Any) -> VisionRef:
    if type(value) is not dict:
        raise ProtocolError("vision", f"must be a map or nil, got {type(value).__name__}")
    _check_keys(value, _VISION_KEYS, "vision")
    return VisionRef(
        path=value["path"],
        frame_indices=_frombuffer(value["frame_indices"], _FRAMES, "vision.frame_indices"),
        height=value["height"],
        width=value["width"],
        fps=value["fps"],
        timestamps=_frombuffer(value["timestamps"], _TIMES, "vision.timestamps"),
        content_hash=value["content_hash"],
        start=value["start"],
        end=value["end"],
    )
