"""The RolloutGroup codec: round trips, and every kind of malformed input is a ProtocolError."""

from __future__ import annotations

import math
import pickle
import uuid

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from system.transport.protocol import (
    SCHEMA_VERSION,
    ImageRef,
    ProtocolError,
    RolloutGroup,
    RolloutSample,
    VisionRef,
    decode_group,
    encode_group,
)

finite = st.floats(allow_nan=False, allow_infinity=False)
finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
token = st.integers(0, 2**31 - 1)
scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), finite, st.text(max_size=8)
)


@st.composite
def samples(draw: st.DrawFn, base_version: int = 0) -> RolloutSample:
    n = draw(st.integers(0, 24))
    spans: list[tuple[int, int]] = []
    if n and draw(st.booleans()):  # sampled across weight updates
        later = draw(st.lists(st.integers(1, n - 1), unique=True, max_size=3)) if n > 1 else []
        starts = [0, *sorted(later)]
        steps = draw(st.lists(st.integers(1, 3), min_size=len(starts), max_size=len(starts)))
        versions = [base_version + sum(steps[: i + 1]) - steps[0] for i in range(len(starts))]
        spans = list(zip(versions, starts, strict=True))
    return RolloutSample(
        completion_ids=np.array(draw(st.lists(token, min_size=n, max_size=n)), dtype=np.int64),
        logprobs=draw(st.lists(finite32, min_size=n, max_size=n)),
        reward=draw(finite),
        reward_components=draw(st.dictionaries(st.text(max_size=6), finite, max_size=3)),
        finish_reason=draw(st.sampled_from(["stop", "length", "abort"])),
        version_starts=spans,
    )


@st.composite
def visions(draw: st.DrawFn) -> VisionRef:
    n = draw(st.integers(0, 12))
    start = draw(st.none() | st.floats(0, 100))
    return VisionRef(
        path=draw(st.text(min_size=1, max_size=20)),
        frame_indices=draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n)),
        height=draw(st.integers(1, 2000)),
        width=draw(st.integers(1, 2000)),
        fps=draw(st.floats(0.1, 240)),
        timestamps=draw(st.lists(finite, min_size=n, max_size=n)),
        content_hash=draw(st.text(max_size=32)),
        start=start,
        end=None if start is None else start + draw(st.floats(0, 100)),
    )


@st.composite
def image_refs(draw: st.DrawFn) -> ImageRef:
    return ImageRef(
        path=draw(st.text(min_size=1, max_size=20)),
        height=draw(st.integers(1, 4096)),
        width=draw(st.integers(1, 4096)),
        content_hash=draw(st.text(max_size=32)),
    )


@st.composite
def groups(draw: st.DrawFn) -> RolloutGroup:
    version = draw(st.integers(0, 2**40))
    vision = draw(st.none() | visions())
    images = [] if vision is not None else draw(st.lists(image_refs(), max_size=3))
    return RolloutGroup(
        run_id=draw(st.text(min_size=1, max_size=10)),
        group_id=str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
        record_id=draw(st.text(max_size=10)),
        weight_version=version,
        created_at=draw(finite),
        finished_at=draw(finite),
        prompt_ids=draw(st.lists(token, max_size=40)),
        vision=vision,
        images=images,
        samples=draw(st.lists(samples(version), min_size=1, max_size=8)),
        problem_type=draw(st.text(max_size=10)),
        answer=draw(st.text(max_size=30)),
        stage=draw(st.none() | st.text(max_size=6)),
        meta=draw(st.dictionaries(st.text(max_size=6), scalar, max_size=4)),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups())
def test_round_trip(group: RolloutGroup) -> None:
    data = encode_group(group)
    back = decode_group(data)
    assert back == group
    assert back.samples[0].completion_ids.dtype == np.int32
    assert back.samples[0].logprobs.dtype == np.float32
    assert encode_group(back) == data


def make_group(g: int = 3, t: int = 5) -> RolloutGroup:
    rng = np.random.default_rng(0)
    return RolloutGroup(
        run_id="run",
        group_id=RolloutGroup.new_group_id(),
        record_id="rec-7",
        weight_version=4,
        created_at=1.0,
        finished_at=2.5,
        prompt_ids=np.arange(10, dtype=np.int32),
        vision=VisionRef("/v.mp4", (0, 15, 30), 224, 336, 30.0, (0.0, 0.5, 1.0), "abc", 0.0, 2.0),
        samples=[
            RolloutSample(rng.integers(0, 1000, t), -rng.random(t), float(i), {"task": 1.0}, "stop")
            for i in range(g)
        ],
        problem_type="multiple_choice",
        answer="B",
        stage="rl",
        meta={"source": "synthetic", "difficulty": 2},
    )


def wire_of(group: RolloutGroup) -> dict:
    return msgpack.unpackb(encode_group(group), raw=False)


def decode_wire(wire: dict) -> RolloutGroup:
    return decode_group(msgpack.packb(wire, use_bin_type=True))


def test_version_spans_are_checked_on_both_sides() -> None:
    """A straddling sample's (version, first token) pairs: rising, from token 0, inside the
    completion, none older than the group's version; the decoder names the sample."""
    ids, lp = np.arange(6), -np.ones(6)
    ok = RolloutSample(ids, lp, 1.0, version_starts=[(4, 0), (5, 3)])
    assert ok.version_starts == ((4, 0), (5, 3)) and ok.oldest_version == 4
    for bad, match in [
        ([(4, 1)], r"version_starts\[0\]\.start: the first version starts at token 0"),
        ([(4, 0), (4, 3)], "must rise"),
        ([(4, 0), (5, 0)], "must rise"),
        ([(4, 0), (5, 6)], "past the 6 tokens"),
        ([(4,)], "pair"),
        ([(-1, 0)], ">= 0"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            RolloutSample(ids, lp, 1.0, version_starts=bad)
    group = make_group()
    with pytest.raises(ProtocolError, match=r"samples\[0\]\.version_starts: version 3 is older"):
        RolloutGroup(
            **{
                **_fields(group),
                "samples": [RolloutSample(np.arange(5), -np.ones(5), 0.0, version_starts=[(3, 0)])],
            }
        )
    wire = wire_of(group)
    wire["version_starts"][1] = [4, 0, 5]
    with pytest.raises(ProtocolError, match=r"version_starts\[1\]: must be a flat list"):
        decode_wire(wire)
    wire["version_starts"][1] = [4, 0, 6, 9]
    with pytest.raises(ProtocolError, match=r"version_starts\[1\]\[1\]\.start: 9 is past"):
        decode_wire(wire)


def _fields(group: RolloutGroup) -> dict:
    from dataclasses import fields

    return {f.name: getattr(group, f.name) for f in fields(group)}


def test_vision_ref_normalizes_sequences() -> None:
    ref = VisionRef("/v.mp4", np.array([1, 2]), 28, 28, 2.0, np.array([0.5, 1.0]), "h")
    assert ref.frame_indices == (1, 2) and type(ref.frame_indices[0]) is int
    assert ref.timestamps == (0.5, 1.0)


def test_truncated_message_is_rejected() -> None:
    data = encode_group(make_group())
    for cut in [0, 1, 7, len(data) // 3, len(data) // 2, len(data) - 1]:
        with pytest.raises(ProtocolError):
            decode_group(data[:cut])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_id", 5),
        ("group_id", "not-a-uuid"),
        ("weight_version", -1),
        ("weight_version", 1.5),
        ("created_at", "yesterday"),
        ("prompt_ids", [1, 2, 3]),
        ("completion_ids", "abc"),
        ("rewards", [1.0, "x", 2.0]),
        ("rewards", [1.0, 2.0]),
        ("rewards", [1.0, True, 2.0]),
        ("finish_reasons", ["stop", 3, "stop"]),
        ("reward_components", [{"a": 1.0}, {"b": [1.0]}, {}]),
        ("answer", None),
        ("vision", [1, 2]),
        ("meta", {"k": [1, 2]}),
        ("meta", {"k": {"deep": 1}}),
        ("meta", "flat"),
    ],
)
def test_wrong_types_name_the_field(field: str, value: object) -> None:
    wire = wire_of(make_group())
    wire[field] = value
    with pytest.raises(ProtocolError) as info:
        decode_wire(wire)
    assert info.value.field.split("[")[0].split(".")[0] == field.split(".")[0]


def test_deep_nesting_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_group(b"\x91" * 200_000 + b"\xc0")
    wire = wire_of(make_group())
    nested: object = 1
    for _ in range(50):
        nested = [nested]
    wire["meta"] = {"k": nested}
    with pytest.raises(ProtocolError, match=r"meta\['k'\]"):
        decode_wire(wire)


def test_size_cap_on_both_sides() -> None:
    group = make_group(g=4, t=300)
    data = encode_group(group)
    with pytest.raises(ProtocolError, match="over the cap"):
        decode_group(data, max_bytes=len(data) - 1)
    with pytest.raises(ProtocolError, match="over the cap"):
        encode_group(group, max_bytes=len(data) - 1)
    assert decode_group(data, max_bytes=len(data)) == group


def test_invalid_utf8_is_rejected() -> None:
    group = make_group()
    wire = wire_of(group)
    wire["answer"] = "QQQQ"
    data = msgpack.packb(wire, use_bin_type=True).replace(b"QQQQ", b"\xff\xfeQQ")
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode_group(data)


def test_mismatched_lengths_are_rejected() -> None:
    wire = wire_of(make_group())
    wire["logprobs"] = wire["logprobs"][:-4]
    with pytest.raises(ProtocolError) as info:
        decode_wire(wire)
    assert info.value.field == "logprobs"
    wire = wire_of(make_group())
    wire["completion_lens"] = np.array([5, 5, 4], "<i4").tobytes()
    with pytest.raises(ProtocolError, match="completion_lens"):
        decode_wire(wire)
    wire = wire_of(make_group())
    wire["completion_ids"] = wire["completion_ids"][:-1]
    with pytest.raises(ProtocolError, match="whole number"):
        decode_wire(wire)
    with pytest.raises(ProtocolError, match="logprobs"):
        RolloutSample([1, 2, 3], [-0.1, -0.2], 0.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    wire = wire_of(make_group())
    lp = np.frombuffer(wire["logprobs"], "<f4").copy()
    lp[7] = bad
    wire["logprobs"] = lp.tobytes()
    with pytest.raises(ProtocolError, match="logprobs: holds a non-finite"):
        decode_wire(wire)
    wire = wire_of(make_group())
    wire["rewards"][1] = bad
    with pytest.raises(ProtocolError, match=r"rewards\[1\]"):
        decode_wire(wire)
    with pytest.raises(ProtocolError, match="logprobs"):
        RolloutSample([1], [bad], 0.0)


def test_scores_that_do_not_sum_to_a_finite_number_are_judged_one_by_one() -> None:
    wire = wire_of(make_group())
    wire["rewards"][:2] = [math.inf, -math.inf]  # their sum is NaN
    with pytest.raises(ProtocolError, match=r"rewards\[0\]"):
        decode_wire(wire)
    wire = wire_of(make_group())
    wire["rewards"] = [1.7e308] * len(wire["rewards"])  # each finite; the sum overflows
    assert decode_wire(wire).rewards.tolist() == wire["rewards"]


def test_schema_version_unknown_keys_and_negative_ids() -> None:
    wire = wire_of(make_group())
    wire["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(ProtocolError, match="schema"):
        decode_wire(wire)
    wire = wire_of(make_group())
    wire["surprise"] = 1
    with pytest.raises(ProtocolError, match="surprise"):
        decode_wire(wire)
    wire = wire_of(make_group())
    del wire["answer"]
    with pytest.raises(ProtocolError, match=r"group\.answer: missing"):
        decode_wire(wire)
    wire = wire_of(make_group())
    wire["prompt_ids"] = np.array([1, -2], "<i4").tobytes()
    with pytest.raises(ProtocolError, match="prompt_ids"):
        decode_wire(wire)


def test_extension_types_and_non_map_payloads_are_rejected() -> None:
    wire = wire_of(make_group())
    wire["meta"] = {"x": msgpack.ExtType(1, b"\x00")}
    with pytest.raises(ProtocolError, match="extension type"):
        decode_wire(wire)
    with pytest.raises(ProtocolError, match="must be a msgpack map"):
        decode_group(msgpack.packb([1, 2, 3]))
    with pytest.raises(ProtocolError, match="must be bytes"):
        decode_group("text")  # type: ignore[arg-type]


class _Explodes:
    """Unpickling this would set a flag: proof that nothing is ever unpickled."""

    fired = False

    def __reduce__(self):
        return (_fire, ())


def _fire() -> None:
    _Explodes.fired = True


def test_pickle_payload_is_never_unpickled() -> None:
    group = make_group()
    for payload in (pickle.dumps(_Explodes()), pickle.dumps(group), pickle.dumps({"schema": 1})):
        with pytest.raises(ProtocolError):
            decode_group(payload)
    assert not _Explodes.fired


def test_vision_ref_checks() -> None:
    with pytest.raises(ProtocolError, match=r"vision\.timestamps"):
        VisionRef("/v.mp4", (0, 1), 28, 28, 2.0, (0.0,), "h")
    with pytest.raises(ProtocolError, match=r"vision\.end"):
        VisionRef("/v.mp4", (), 28, 28, 2.0, (), "h", start=3.0, end=1.0)
    with pytest.raises(ProtocolError, match=r"vision\.fps"):
        VisionRef("/v.mp4", (), 28, 28, 0.0, (), "h")
    wire = wire_of(make_group())
    wire["vision"]["height"] = 0
    with pytest.raises(ProtocolError, match=r"vision\.height"):
        decode_wire(wire)


def test_arrays_are_read_only_views() -> None:
    group = decode_group(encode_group(make_group()))
    with pytest.raises(ValueError):
        group.samples[0].completion_ids[0] = 1
    assert group.rewards.tolist() == [0.0, 1.0, 2.0]


def test_images_travel_by_reference_and_are_checked():
    ref = ImageRef("/data/a.png", 56, 84, "h1")
    group = replace_group(make_group(), vision=None, images=(ref, ImageRef("/b.png", 28, 28, "h2")))
    back = decode_group(encode_group(group))
    assert back.images == group.images and back.vision is None
    with pytest.raises(
        ProtocolError, match=r"images: a prompt carries a video or images, not both"
    ):
        replace_group(make_group(), images=(ref,))
    with pytest.raises(ProtocolError, match=r"images\[\]\.height"):
        ImageRef("/a.png", 0, 28, "h")
    wire = msgpack.unpackb(encode_group(group), raw=False)
    wire["images"] = [["/a.png", 28]]
    with pytest.raises(ProtocolError, match=r"images\[0\]: must be \[path, height, width"):
        decode_group(msgpack.packb(wire, use_bin_type=True))


def replace_group(group: RolloutGroup, **changes) -> RolloutGroup:
    fields = {f: getattr(group, f) for f in group.__dataclass_fields__}
    return RolloutGroup(**{**fields, **changes})
