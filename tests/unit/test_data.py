"""Dataset records: validation messages name file and line, importers map Video-R1 and
VideoAuto-R1 shapes, the weighted mix is deterministic and resumes from its saved state."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from system.config import DataConfig, DatasetSpec
from system.data.records import (
    DataError,
    Dataset,
    MixState,
    Record,
    RecordMixer,
    load_dataset,
    load_shard,
    load_split,
    parse_record,
    record_kind,
    resolve_video,
)

GOOD = {
    "id": "r1",
    "video": "clips/a.mp4",
    "problem_type": "multiple_choice",
    "question": "Which way?",
    "options": ["A. left", "B. right"],
    "answer": "B",
}


def _jsonl(path: Path, items: list) -> str:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return str(path)


def test_valid_records_of_every_type():
    kinds = [
        GOOD,
        {**GOOD, "id": "n", "problem_type": "numerical", "answer": "3", "options": None},
        {**GOOD, "id": "m", "problem_type": "math", "answer": "\\frac{1}{2}", "options": None},
        {**GOOD, "id": "t", "problem_type": "temporal_grounding", "options": None,
         "answer": "[1.0, 2.0]", "spans": [[1, 2]]},
        {**GOOD, "id": "g", "problem_type": "grounded_qa", "spans": [[0, 1.5]]},
        {**GOOD, "id": "f", "problem_type": "free_form", "answer": "pour the water",
         "options": None},
        {**GOOD, "id": "s", "problem_type": "subaction", "options": None, "answer": "a, b",
         "phases": [{"name": "a", "start": 0, "end": 1}, {"name": "b", "start": 1, "end": 3}]},
    ]  # fmt: skip
    records = [parse_record(k, "x.jsonl:1") for k in kinds]
    assert [r.problem_type for r in records][-1] == "subaction"
    assert records[-1].phases[1].end == 3.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": "C"}, "answer 'C' is not one of the letters"),
        ({"options": None}, "multiple_choice needs options"),
        ({"problem_type": "temporal_grounding", "options": None}, "needs spans"),
        ({"problem_type": "subaction", "options": None}, "subaction needs phases"),
        ({"problem_type": "numerical", "options": None, "answer": "three"}, "not a number"),
        ({"span": [5, 2]}, "span \\[5.0, 2.0\\] must satisfy"),
        ({"problem_type": "counting"}, "problem_type"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"question": ""}, "question"),
    ],
)
def test_validation_error_names_file_line_and_field(tmp_path, change, message):
    bad = {**GOOD, "id": "bad", **change}
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "id": "r2"}, bad])
    with pytest.raises(DataError, match=message) as info:
        load_dataset(DatasetSpec(path=path))
    assert str(info.value).startswith(f"{path}:3: ")


def test_bad_json_line_and_duplicate_ids_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n{not json\n")
    with pytest.raises(DataError, match=rf"{path}:3: not valid JSON"):
        load_dataset(DatasetSpec(path=str(path)))
    dup = _jsonl(tmp_path / "e.jsonl", [GOOD, GOOD])
    with pytest.raises(DataError, match=r"e.jsonl:2: id 'r1' repeats the record at .*e.jsonl:1"):
        load_dataset(DatasetSpec(path=dup))


def test_missing_file_and_empty_selection_are_clear(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        load_dataset(DatasetSpec(path=str(tmp_path / "nope.jsonl")))
    path = _jsonl(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(DataError, match="no usable records"):
        load_dataset(DatasetSpec(path=path), problem_types=["numerical"])


def test_resolve_video_under_root_unless_absolute_or_uri():
    rec = parse_record(GOOD, "x")
    assert resolve_video(rec, "/data") == "/data/clips/a.mp4"
    assert resolve_video(rec.model_copy(update={"video": "/abs/v.mp4"}), "/data") == "/abs/v.mp4"
    uri = rec.model_copy(update={"video": "s3://bucket/v.mp4"})
    assert resolve_video(uri, "/data") == "s3://bucket/v.mp4"


# --------------------------------------------------------------------------- importers

VIDEO_R1 = [
    {
        "problem_id": 2,
        "problem": "What appears on the screen during the missile's ascent?",
        "data_type": "video",
        "problem_type": "multiple choice",
        "options": ["A. A notification", "B. A command", "C. A warning", "D. A weather update"],
        "process": "<think>It looks like a pop-up.</think>",
        "solution": "<answer>A</answer>",
        "path": "./LLaVA-Video-178K/liwei_youtube_videos/videos/x.mp4",
        "data_source": "LLaVA-Video-178K/30_60_s_youtube_v0_1",
    },
    {
        "problem_id": 3,
        "problem": "How many cups are on the table?",
        "data_type": "video",
        "problem_type": "numerical",
        "options": [],
        "solution": "<answer> 4 </answer>",
        "path": "./CLEVRER/video_1.mp4",
        "data_source": "CLEVRER",
    },
    {
        "problem_id": 4,
        "problem": "What is shown?",
        "data_type": "image",
        "problem_type": "free-form",
        "options": [],
        "solution": "<answer>a cat</answer>",
        "path": "./General/img.jpg",
        "data_source": "General",
    },
    {
        "problem_id": 5,
        "problem": "What does the sign say?",
        "data_type": "video",
        "problem_type": "OCR",
        "options": [],
        "solution": "<answer>EXIT</answer>",
        "path": "./STAR/v.mp4",
        "data_source": "STAR",
    },
]


def test_video_r1_importer(tmp_path):
    path = tmp_path / "Video-R1-260k.json"
    path.write_text(json.dumps(VIDEO_R1, indent=2))
    ds = load_dataset(DatasetSpec(path=str(path), format="video_r1"))
    mc, num, picture, ocr = ds.records
    assert mc.id == "video_r1-2" and mc.problem_type == "multiple_choice" and mc.answer == "A"
    assert mc.video == "LLaVA-Video-178K/liwei_youtube_videos/videos/x.mp4"
    assert mc.options[3] == "D. A weather update"
    assert mc.source == "LLaVA-Video-178K/30_60_s_youtube_v0_1"
    assert mc.meta["reasoning"].startswith("<think>")
    assert (num.problem_type, num.answer, num.options) == ("numerical", "4", None)
    assert (ocr.problem_type, ocr.answer) == ("free_form", "EXIT")
    # Image items are image records: the path becomes `images`, no `video`.
    assert (picture.video, picture.images) == (None, ["General/img.jpg"])
    assert record_kind(picture) == "image" and record_kind(mc) == "video"
    assert not ds.skipped


def test_video_r1_importer_errors_name_the_item(tmp_path):
    bad = [VIDEO_R1[0], {**VIDEO_R1[1], "problem_type": "ranking"}]
    path = tmp_path / "v.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"v.json\[item 1\]: problem_type 'ranking'"):
        load_dataset(DatasetSpec(path=str(path), format="video_r1"))
    missing = {k: v for k, v in VIDEO_R1[0].items() if k != "path"}
    path.write_text(json.dumps([missing]))
    with pytest.raises(DataError, match=r"\[item 0\]: missing field\(s\) path"):
        load_dataset(DatasetSpec(path=str(path), format="video_r1"))


VIDEOAUTO_R1 = [
    # Charades-STA / ActivityNet grounding
    {"video": "Charades_v1_480/AO8RW.mp4", "description": "a person opens a door.",
     "timestamps": [2.4, 7.9]},
    # Time-R1
    {"video": "timer1/v1.mp4", "sentence": "the dog jumps", "timestamp": [10, 14.5]},
    # NeXT-GQA
    {"video": "nextqa/1.mp4", "question": "why did the boy run?",
     "options": ["A. to catch a ball", "B. to hide", "C. to eat"], "answer": "A",
     "timestamps": [[3.0, 6.5]]},
    # TVBench, with a span and candidate texts as the answer
    {"video": "tvbench/a.mp4", "question": "What happens first?",
     "candidates": ["sit down", "stand up"], "answer": "stand up", "start": 1.0, "end": 9.0},
    # Video-R1 subset inside VideoAuto-R1's mix
    VIDEO_R1[1],
]  # fmt: skip


def test_videoauto_r1_importer(tmp_path):
    path = tmp_path / "mix.jsonl"
    _jsonl(path, VIDEOAUTO_R1)
    ds = load_dataset(DatasetSpec(path=str(path), format="videoauto_r1"))
    charades, timer, gqa, tv, vr1 = ds.records
    assert charades.problem_type == "temporal_grounding"
    assert charades.spans == [(2.4, 7.9)] and charades.answer == "[2.4, 7.9]"
    assert charades.meta["query"] == "a person opens a door."
    assert timer.spans == [(10.0, 14.5)]
    assert gqa.problem_type == "grounded_qa" and gqa.answer == "A" and gqa.spans == [(3.0, 6.5)]
    assert tv.problem_type == "multiple_choice"
    assert tv.options == ["A. sit down", "B. stand up"] and tv.answer == "B"
    assert tv.span == (1.0, 9.0)
    assert vr1.id == "video_r1-3" and vr1.problem_type == "numerical"
    assert len({r.id for r in ds.records}) == 5


def test_videoauto_r1_unknown_shape_is_named(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"video": "a.mp4", "caption": "hi"}])
    with pytest.raises(DataError, match=r"m.jsonl:1: missing field\(s\) question, answer"):
        load_dataset(DatasetSpec(path=path, format="videoauto_r1"))
    path = _jsonl(tmp_path / "n.jsonl", [{"video": "a.mp4", "question": "q", "answer": "x"}])
    with pytest.raises(DataError, match=r"n.jsonl:1: not a known VideoAuto-R1 shape"):
        load_dataset(DatasetSpec(path=path, format="videoauto_r1"))


# Shaped as VideoAuto-R1's text and image annotations (dapo_math_filter-6k.json,
# virl-filter-23k.json, thinklite-filter-4k.json), read by its data_rl.py.
VIDEOAUTO_R1_TEXT_IMAGE = [
    {"prompt": "Let $x + 2 = 5$. What is $x$?", "solution": "3"},
    {"question": "<image>What is the area of the shaded region?", "image": ["virl/geo/17.png"],
     "answer": "The area is \\boxed{\\frac{9}{2}}."},
    {"question": "<image>Which style is the drawing?", "image": ["virl/art/3.jpg"],
     "answer": "\\boxed{Cartoonish}"},
    {"problem": "<image>\nHow many cubes are left?", "image": "thinklite/12.png",
     "ground_truth": "4", "problem_type": "math"},
    {"problem": "<image>Which option is correct? A. red B. blue", "image": "thinklite/13.png",
     "ground_truth": "B", "problem_type": "exact_match"},
]  # fmt: skip


def test_videoauto_r1_text_and_image_sets(tmp_path):
    path = _jsonl(tmp_path / "rl.jsonl", VIDEOAUTO_R1_TEXT_IMAGE)
    dapo, area, style, cubes, option = load_dataset(
        DatasetSpec(path=path, format="videoauto_r1")
    ).records
    assert record_kind(dapo) == "text" and (dapo.problem_type, dapo.answer) == ("math", "3")
    assert record_kind(area) == "image" and area.images == ["virl/geo/17.png"]
    assert (area.problem_type, area.answer) == ("math", "\\frac{9}{2}")
    assert area.question == "What is the area of the shaded region?"  # <image> tag removed
    assert (style.problem_type, style.answer) == ("free_form", "Cartoonish")  # exact match
    assert cubes.images == ["thinklite/12.png"] and cubes.problem_type == "math"
    assert (option.problem_type, option.answer, option.source) == (
        "free_form", "B", "ThinkLite-VL-Hard"
    )  # fmt: skip
    bad = {**VIDEOAUTO_R1_TEXT_IMAGE[3], "problem_type": "ranking"}
    path = _jsonl(tmp_path / "bad.jsonl", [VIDEOAUTO_R1_TEXT_IMAGE[0], bad])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: problem_type 'ranking' is not one of"):
        load_dataset(DatasetSpec(path=path, format="videoauto_r1"))
    path = _jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"odd\.jsonl:1: not a known VideoAuto-R1 shape"):
        load_dataset(DatasetSpec(path=path, format="videoauto_r1"))


# Shaped as Pause-and-Think's benchmark items and its LLaMA-Factory sharegpt training file.
PAUSE_AND_THINK_BENCH = [
    {
        "id": "pt-0001",
        "video": "ego/kitchen_012.mp4",
        "question_video": "ego/kitchen_012_q.mp4",
        "question": "What should I do next?",
        "ground_truth": "<thinking>The kettle has boiled and the cup holds a tea bag.</thinking>"
        "<answer>Pour the hot water from the kettle into the cup.</answer>",
        "category": "Future/Planning",
    },
    {
        "video": "ego/desk_003.mp4",
        "question": "Where did I leave the blue pen?",
        "ground_truth": "<thinking>It was put down next to the laptop.</thinking>"
        "<answer>On the desk, to the right of the laptop.</answer>",
        "category": "Factual/Past",
    },
]
PAUSE_AND_THINK_SFT = [
    {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "<video>What should I do next?"},
            {
                "role": "assistant",
                "content": "<thinking>The dough is kneaded.</thinking>"
                "<answer>Cover the bowl and let it rest.</answer>",
            },
        ],
        "videos": ["train/bake_07_q.mp4"],
    },
]


def test_pause_and_think_importer(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(PAUSE_AND_THINK_BENCH, indent=1))
    first, second = load_dataset(DatasetSpec(path=str(path), format="pause_and_think")).records
    # The model sees the clip up to the pause; the full video is kept for reference.
    assert first.id == "pt-0001" and first.video == "ego/kitchen_012_q.mp4"
    assert first.meta["full_video"] == "ego/kitchen_012.mp4"
    assert first.problem_type == "free_form"
    assert first.answer == "Pour the hot water from the kettle into the cup."
    assert first.meta["reasoning"].startswith("The kettle has boiled")
    assert first.meta["category"] == "Future/Planning"
    assert second.id == "pause_and_think-1" and second.video == "ego/desk_003.mp4"
    assert second.meta["category"] == "Factual/Past"
    sft = _jsonl(tmp_path / "train.jsonl", PAUSE_AND_THINK_SFT)
    (item,) = load_dataset(DatasetSpec(path=sft, format="pause_and_think")).records
    assert item.video == "train/bake_07_q.mp4" and item.question == "What should I do next?"
    assert item.answer == "Cover the bowl and let it rest."
    assert item.meta["reasoning"] == "The dough is kneaded."


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({**PAUSE_AND_THINK_BENCH[1], "ground_truth": "just pour it"},
         r"b.json\[item 1\]: ground_truth has no <answer>"),
        ({k: v for k, v in PAUSE_AND_THINK_BENCH[1].items() if k != "question"},
         r"b.json\[item 1\]: missing field\(s\) question"),
        ({**PAUSE_AND_THINK_BENCH[1], "category": "Past"},
         r"b.json\[item 1\]: category 'Past' is not one of Factual/Past, Future/Planning"),
        ({**PAUSE_AND_THINK_SFT[0], "videos": []},
         r"b.json\[item 1\]: videos must list exactly one path"),
        ({**PAUSE_AND_THINK_SFT[0], "messages": PAUSE_AND_THINK_SFT[0]["messages"][:2]},
         r"b.json\[item 1\]: messages need one user and one assistant turn"),
    ],
)  # fmt: skip
def test_pause_and_think_errors_name_file_and_item(tmp_path, item, message):
    path = tmp_path / "b.json"
    path.write_text(json.dumps([PAUSE_AND_THINK_BENCH[0], item]))
    with pytest.raises(DataError, match=message):
        load_dataset(DatasetSpec(path=str(path), format="pause_and_think"))


# --------------------------------------------------------------------------- mixing


def _dataset(name: str, n: int, weight: float = 1.0) -> Dataset:
    records = [
        Record(id=f"{name}{i}", video="v.mp4", problem_type="free_form", question="q", answer="a")
        for i in range(n)
    ]
    return Dataset(name=name, records=records, weight=weight)


def test_mix_is_deterministic_and_follows_weights():
    a, b = _dataset("a", 50, weight=3.0), _dataset("b", 50, weight=1.0)
    first = [r.id for r in RecordMixer([a, b], seed=7).take(2000)]
    again = [r.id for r in RecordMixer([a, b], seed=7).take(2000)]
    other = [r.id for r in RecordMixer([a, b], seed=8).take(2000)]
    assert first == again
    assert first != other
    share_a = sum(i.startswith("a") for i in first) / len(first)
    assert 0.71 < share_a < 0.79


def test_mix_visits_every_record_once_per_epoch_in_shuffled_order():
    ds = _dataset("a", 20)
    ids = [r.id for r in RecordMixer([ds], seed=0).take(40)]
    assert sorted(ids[:20]) == sorted(r.id for r in ds.records)
    assert sorted(ids[20:]) == sorted(ids[:20])
    assert ids[:20] != [r.id for r in ds.records]  # shuffled
    assert ids[:20] != ids[20:]  # a fresh permutation each epoch


def test_mix_without_shuffle_reads_each_dataset_in_file_order():
    a, b = _dataset("a", 6, weight=2.0), _dataset("b", 4)
    ids = [r.id for r in RecordMixer([a, b], seed=0, shuffle=False).take(40)]
    assert [i for i in ids if i.startswith("a")][:12] == [f"a{i}" for i in range(6)] * 2
    assert [i for i in ids if i.startswith("b")][:8] == [f"b{i}" for i in range(4)] * 2


def test_mix_resumes_exactly_from_saved_state():
    datasets = [_dataset("a", 7, 2.0), _dataset("b", 5, 1.0)]
    reference = [r.id for r in RecordMixer(datasets, seed=3).take(60)]
    mixer = RecordMixer(datasets, seed=3)
    head = [r.id for r in mixer.take(23)]
    saved = json.loads(json.dumps(mixer.state.to_dict()))  # as a checkpoint would store it
    resumed = RecordMixer(datasets, seed=3, state=MixState.from_dict(saved))
    assert head + [r.id for r in resumed.take(37)] == reference


def test_mix_state_from_another_config_is_refused():
    state = RecordMixer([_dataset("a", 3)], seed=0).state
    with pytest.raises(DataError, match="same data config"):
        RecordMixer([_dataset("a", 3), _dataset("b", 3)], seed=0, state=state)


def test_rollout_shards_keep_every_dataset_and_its_weight(tmp_path):
    def rows(name, n):
        return [{**GOOD, "id": f"{name}{i}"} for i in range(n)]

    video = _jsonl(tmp_path / "v.jsonl", rows("v", 5))
    image = _jsonl(tmp_path / "i.jsonl", [{**r, "video": None, "images": ["x.png"]}
                                          for r in rows("i", 4)])  # fmt: skip
    config = DataConfig(train=[DatasetSpec(path=video, weight=3.0), DatasetSpec(path=image)])
    first, second = load_shard(config, 0, 2), load_shard(config, 1, 2)
    assert [[r.id for r in d.records] for d in first] == [["v0", "v2", "v4"], ["i0", "i2"]]
    assert [[r.id for r in d.records] for d in second] == [["v1", "v3"], ["i1", "i3"]]
    assert [d.weight for d in first] == [3.0, 1.0]
    with pytest.raises(DataError, match=r"i\.jsonl: 4 training records cannot feed 5 rollout"):
        load_shard(config, 0, 5)


def test_load_split_filters_problem_types(tmp_path):
    numerical = {**GOOD, "id": "n", "problem_type": "numerical", "answer": "2", "options": None}
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, numerical])
    config = DataConfig(train=[DatasetSpec(path=path)], problem_types=["numerical"])
    (ds,) = load_split(config, "train")
    assert [r.id for r in ds.records] == ["n"]
    assert ds.skipped == Counter({"problem_type multiple_choice not selected": 1})


def test_text_only_record_has_no_video_to_resolve():
    rec = parse_record({**GOOD, "video": None}, "x")
    assert rec.video is None
    with pytest.raises(DataError, match="no video"):
        resolve_video(rec, "/data")
