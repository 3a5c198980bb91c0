"""Dataset records: the JSONL format, its validation, importers, mixing and a resumable cursor.

Owns what a training or held-out example is (`Record`), how files of them are read (native
JSONL, or the Video-R1 / VideoAuto-R1 training JSON converted on load; see docs/data.md for
the field mapping), and the order the learner sees them in: datasets mixed by weight with a
deterministic shuffle, driven by a small `MixState` the checkpoint stores and restores. Every
validation error names the file and the line (or the item of a JSON array) and the field.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from system.config import DataConfig, DatasetSpec, ProblemType

_LETTER = re.compile(r"^\s*\(?([A-Z])[\.\):]")


class DataError(ValueError):
    """A dataset file that cannot be used; the message names the file, line and field."""


class Phase(BaseModel):
    """One phase of an action (subaction records), with its time span in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    start: float = Field(ge=0)
    end: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Phase:
        if self.end <= self.start:
            raise ValueError(f"phase {self.name!r}: end ({self.end}) must be after start")
        return self


class Record(BaseModel):
    """One example. Times (span, spans, phases) are seconds; with a `span`, the model sees
    only that clip and spans/phases are measured from the start of the video file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1)
    video: str | None = Field(None, min_length=1)
    """Path relative to the data root, an absolute path, or a URI; absent for an image or a
    text-only question."""
    images: list[str] | None = Field(None, min_length=1)
    """Image files (relative to the data root, or absolute), shown in this order before the
    question; a record carries a video or images, not both."""
    problem_type: ProblemType
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    """Ground truth as text: an option letter, a number, '[s, e]', or phase names."""
    options: list[str] | None = None
    """Multiple-choice options, each starting with its letter ('A. ...')."""
    span: tuple[float, float] | None = None
    """Only this part of the video, [start, end] seconds."""
    spans: list[tuple[float, float]] | None = None
    """Ground-truth time spans (temporal_grounding, grounded_qa)."""
    phases: list[Phase] | None = None
    """Ordered phases (subaction)."""
    source: str | None = None
    """Where the record came from (dataset / subset)."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Anything else (e.g. a reference reasoning trace for SFT)."""

    @model_validator(mode="after")
    def _type_fields(self) -> Record:
        if self.images is not None and self.video is not None:
            raise ValueError("a record carries a video or images, not both")
        if self.images is not None and not all(p.strip() for p in self.images):
            raise ValueError("images: every entry must be a non-empty path")
        for name, pair in [("span", self.span), *[("spans", s) for s in self.spans or []]]:
            if pair is not None and not 0 <= pair[0] < pair[1]:
                raise ValueError(f"{name} {list(pair)} must satisfy 0 <= start < end")
        kind = self.problem_type
        if kind in ("multiple_choice", "grounded_qa") and self.options:
            letters = [_option_letter(o) for o in self.options]
            if None in letters:
                raise ValueError("every option must start with its letter, like 'A. ...'")
            if self.answer.strip() not in letters:
                raise ValueError(f"answer {self.answer!r} is not one of the letters {letters}")
        if kind == "multiple_choice" and not self.options:
            raise ValueError("multiple_choice needs options")
        if kind in ("temporal_grounding", "grounded_qa") and not self.spans:
            raise ValueError(f"{kind} needs spans (ground-truth [start, end] pairs)")
        if kind == "subaction" and not self.phases:
            raise ValueError('subaction needs phases: [{"name", "start", "end"}, ...]')
        if kind == "numerical" and _number(self.answer) is None:
            raise ValueError(f"numerical answer {self.answer!r} is not a number")
        return self


def _option_letter(option: str) -> str | None:
    match = _LETTER.match(option)
    return match.group(1) if match else None


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def resolve_video(record: Record, root: str | Path) -> str:
    """The path or URI to decode: URIs and absolute paths as they are, others under `root`.
    A text-only record has none: DataError (video stages skip and count it)."""
    if record.video is None:
        raise DataError(f"record {record.id} has no video (a text-only record)")
    if "://" in record.video or Path(record.video).is_absolute():
        return record.video
    return str(Path(root) / record.video)


def resolve_images(record: Record, root: str | Path) -> list[str]:
    """The image files to read, absolute paths as they are, others under `root`."""
    return [p if Path(p).is_absolute() else str(Path(root) / p) for p in record.images or ()]


def record_kind(record: Record) -> str:
    """`video`, `image` or `text`: what a record shows besides its question."""
    if record.video is not None:
        return "video"
    return "image" if record.images else "text"


# --------------------------------------------------------------------------- reading


def parse_record(item: Any, where: str) -> Record:
    """Validate one native record; `where` ('file:line') prefixes every error."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(item).__name__}")
    try:
        return Record.model_validate(item)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "record"
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{loc}: {msg}")
        raise DataError(f"{where}: " + "; ".join(problems)) from None


def read_items(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed JSON) for each record of a JSONL file or a JSON array file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        for i, item in enumerate(items):
            yield f"{path}[item {i}]", item
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None


@dataclass
class Dataset:
    """Records of one file, with its mixing weight and what was left out and why."""

    name: str
    records: list[Record]
    weight: float = 1.0
    skipped: Counter[str] = field(default_factory=Counter)


def load_dataset(spec: DatasetSpec, problem_types: list[str] | None = None) -> Dataset:
    """Read and validate one dataset file in its declared format."""
    convert = CONVERTERS[spec.format]
    records: list[Record] = []
    skipped: Counter[str] = Counter()
    seen: dict[str, str] = {}
    for index, (where, item) in enumerate(read_items(spec.path)):
        native = convert(item, where, index)
        if isinstance(native, str):
            skipped[native] += 1
            continue
        record = parse_record(native, where)
        if record.id in seen:
            raise DataError(f"{where}: id {record.id!r} repeats the record at {seen[record.id]}")
        seen[record.id] = where
        if problem_types is not None and record.problem_type not in problem_types:
            skipped[f"problem_type {record.problem_type} not selected"] += 1
            continue
        records.append(record)
    if not records:
        raise DataError(f"{spec.path}: no usable records (skipped: {dict(skipped) or 'none'})")
    return Dataset(name=spec.path, records=records, weight=spec.weight, skipped=skipped)


def load_split(config: DataConfig, split: Literal["train", "eval"]) -> list[Dataset]:
    """All datasets of a split, as declared in the data config."""
    specs = config.train if split == "train" else config.eval
    return [load_dataset(spec, config.problem_types) for spec in specs]


def split_records(config: DataConfig, split: Literal["train", "eval"]) -> list[Record]:
    """Every record of a split, dataset after dataset."""
    return [r for ds in load_split(config, split) for r in ds.records]


def load_shard(config: DataConfig, index: int, count: int) -> list[Dataset]:
    """Shard `index` of `count` of every training dataset (every count-th record from index,
    the weights kept): what a rollout actor mixes for itself, so that a restarted one
    rebuilds it from files alone. DataError naming a dataset too small to give every actor a
    record."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count} does not exist")
    shards = []
    for ds in load_split(config, "train"):
        if len(ds.records) < count:
            raise DataError(
                f"{ds.name}: {len(ds.records)} training records cannot feed {count} rollout "
                "engines (each reads every n-th record of every dataset)"
            )
        shards.append(Dataset(ds.name, ds.records[index::count], ds.weight, ds.skipped))
    return shards


# --------------------------------------------------------------------------- importers
# Each converter maps one item of a file to a native record dict, or to a string saying why
# it is skipped (counted, not an error: e.g. image items in a video run). docs/data.md has
# the field mapping.

_VIDEO_R1_TYPES: dict[str, str] = {
    "multiple choice": "multiple_choice",
    "numerical": "numerical",
    "regression": "numerical",
    "math": "math",
    "free-form": "free_form",
    "OCR": "free_form",
}
_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


def from_native(item: Any, where: str, index: int) -> Any:
    return item


def from_video_r1(item: Any, where: str, index: int) -> dict[str, Any] | str:
    """A Video-R1-260k / Video-R1-COT-165k item."""
    _require(item, where, ("problem_id", "problem", "problem_type", "path", "solution"))
    media = item.get("data_type", "video")
    if media not in ("video", "image"):
        raise DataError(f"{where}: data_type {media!r} is not video or image")
    kind = _VIDEO_R1_TYPES.get(item["problem_type"])
    if kind is None:
        known = ", ".join(sorted(_VIDEO_R1_TYPES))
        raise DataError(f"{where}: problem_type {item['problem_type']!r} is not one of {known}")
    match = _ANSWER_TAG.search(str(item["solution"]))
    record: dict[str, Any] = {
        "id": f"video_r1-{item['problem_id']}",
        **_media(media, item["path"], where),
        "problem_type": kind,
        "question": item["problem"],
        "answer": (match.group(1) if match else str(item["solution"])).strip(),
        "source": item.get("data_source"),
    }
    if kind == "multiple_choice":
        record["options"] = item.get("options")
    if item.get("process"):
        record["meta"] = {"reasoning": item["process"]}
    return record


def _media(kind: str, path: Any, where: str) -> dict[str, Any]:
    """The record's `video` or `images` field from an importer's path (a string, or a list
    of strings for several images); a leading './' is dropped."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise DataError(f"{where}: path must be a non-empty string (or a list of them for images)")
    paths = [p.removeprefix("./") for p in paths]
    if kind == "video":
        if len(paths) != 1:
            raise DataError(f"{where}: a video item has one path, got {len(paths)}")
        return {"video": paths[0]}
    return {"images": paths}


def from_videoauto_r1(item: Any, where: str, index: int) -> dict[str, Any] | str:
    """A VideoAuto-R1 training annotation: its Video-R1 subset, Charades-STA / ActivityNet
    grounding ({video, description, timestamps}), Time-R1 ({video, sentence, timestamp}),
    NeXT-GQA ({video, question, options, answer, timestamps}), TVBench-style multiple
    choice ({video, question, candidates, answer[, start, end]}), or its text and image sets:
    DAPO-Math ({prompt, solution}), ViRL ({question, image: [path], answer: \\boxed{..}}),
    ThinkLite-VL-Hard ({problem, image, ground_truth, problem_type})."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: an item must be a JSON object, got {type(item).__name__}")
    if "problem_id" in item and "solution" in item:
        return from_video_r1(item, where, index)
    if "video" not in item:
        return _videoauto_text_or_image(item, where, index)
    _require(item, where, ("video",))
    base: dict[str, Any] = {
        "id": str(item.get("id", f"videoauto_r1-{index}")),
        "video": item["video"],
    }
    times = item.get("timestamps", item.get("timestamp"))
    query = item.get("description", item.get("sentence"))
    if times is not None and query is not None:
        spans = _spans(times, where)
        return {
            **base,
            "problem_type": "temporal_grounding",
            "question": f"Locate the start and end timestamps of the segment: {query}",
            "answer": _span_text(spans[0]),
            "spans": spans,
            "meta": {"query": query},
        }
    _require(item, where, ("question", "answer"))
    choices = item.get("candidates", item.get("options", item.get("choices")))
    if choices is None:
        raise DataError(
            f"{where}: not a known VideoAuto-R1 shape (needs description+timestamps, "
            "sentence+timestamp, or question+options/candidates+answer)"
        )
    options, answer = _lettered(choices, str(item["answer"]), where)
    record = {**base, "question": item["question"], "options": options, "answer": answer}
    if times is not None:
        return {**record, "problem_type": "grounded_qa", "spans": _spans(times, where)}
    if "start" in item and "end" in item:
        record["span"] = [float(item["start"]), float(item["end"])]
    return {**record, "problem_type": "multiple_choice"}


_BOXED = re.compile(r"\\boxed\{(.*)\}", re.DOTALL)
_MATHLIKE = re.compile(r"[0-9\\^=+/]")
_THINKLITE_TYPES = {"math": "math", "exact_match": "free_form"}


def _videoauto_text_or_image(item: dict[str, Any], where: str, index: int) -> dict[str, Any]:
    """VideoAuto-R1's text (DAPO-Math) and image (ViRL, ThinkLite-VL-Hard) items."""
    base = {"id": str(item.get("id", f"videoauto_r1-{index}"))}
    if "prompt" in item and "solution" in item:  # DAPO-Math
        question = item["prompt"]
        if not isinstance(question, str):
            raise DataError(f"{where}: prompt must be a string, got {type(question).__name__}")
        return {**base, "problem_type": "math", "question": question,
                "answer": str(item["solution"]), "source": "DAPO-Math"}  # fmt: skip
    if "question" in item and "image" in item:  # ViRL: the answer boxed
        _require(item, where, ("answer",))
        boxed = _BOXED.search(str(item["answer"]))
        answer = (boxed.group(1) if boxed else str(item["answer"])).strip()
        # VideoAuto-R1 grades by math-verify what it can parse, by exact match the rest
        # ("Cartoonish", "A"): a digit or a LaTeX operator marks math here.
        kind = "math" if _MATHLIKE.search(answer) else "free_form"
        return {**base, **_media("image", item["image"], where), "problem_type": kind,
                "question": _no_image_tag(item["question"]), "answer": answer,
                "source": "ViRL"}  # fmt: skip
    if "problem" in item and "image" in item:  # ThinkLite-VL-Hard
        _require(item, where, ("ground_truth", "problem_type"))
        kind = _THINKLITE_TYPES.get(item["problem_type"])
        if kind is None:
            raise DataError(
                f"{where}: problem_type {item['problem_type']!r} is not one of "
                f"{', '.join(_THINKLITE_TYPES)}"
            )
        return {**base, **_media("image", item["image"], where), "problem_type": kind,
                "question": _no_image_tag(item["problem"]),
                "answer": str(item["ground_truth"]).strip(), "source": "ThinkLite-VL-Hard"}  # fmt: skip
    raise DataError(
        f"{where}: not a known VideoAuto-R1 shape (a video item needs `video`; text: prompt+"
        "solution; image: question+image+answer or problem+image+ground_truth+problem_type)"
    )


def _no_image_tag(text: Any) -> str:
    return str(text).replace("<image>", "").strip()


_THINKING = re.compile(r"<(thinking|think)>\s*(.*?)\s*</\1>", re.DOTALL)
_PNT_CATEGORIES = ("Factual/Past", "Future/Planning")


def _thinking_answer(text: Any, where: str, field: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a `<thinking>…</thinking><answer>…</answer>` text (`<think>`
    accepted too); DataError naming `field` without an answer."""
    if not isinstance(text, str):
        raise DataError(f"{where}: {field} must be a string, got {type(text).__name__}")
    answer = _ANSWER_TAG.search(text)
    if answer is None or not answer.group(1).strip():
        raise DataError(f"{where}: {field} has no <answer>…</answer>: {text[:80]!r}")
    thinking = _THINKING.search(text)
    return (thinking.group(2) if thinking else None), answer.group(1).strip()


def from_pause_and_think(item: Any, where: str, index: int) -> dict[str, Any] | str:
    """A Pause-and-Think item: a benchmark item ({video, question_video?, question,
    ground_truth, category}) or a LLaMA-Factory sharegpt training item ({messages, videos}).
    The model sees the clip up to the pause: `question_video` when the item has one."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: an item must be a JSON object, got {type(item).__name__}")
    if "messages" in item:
        return _pause_and_think_sft(item, where, index)
    _require(item, where, ("video", "question", "ground_truth"))
    reasoning, answer = _thinking_answer(item["ground_truth"], where, "ground_truth")
    category = item.get("category")
    if category is not None and category not in _PNT_CATEGORIES:
        raise DataError(
            f"{where}: category {category!r} is not one of {', '.join(_PNT_CATEGORIES)}"
        )
    meta: dict[str, Any] = {"full_video": item["video"], "reference": item["ground_truth"]}
    if reasoning:
        meta["reasoning"] = reasoning
    if category is not None:
        meta["category"] = category
    return {
        "id": str(item.get("id", f"pause_and_think-{index}")),
        "video": item.get("question_video") or item["video"],
        "problem_type": "free_form",
        "question": item["question"],
        "answer": answer,
        "source": "pause_and_think",
        "meta": meta,
    }


def _pause_and_think_sft(item: dict[str, Any], where: str, index: int) -> dict[str, Any]:
    _require(item, where, ("messages", "videos"))
    messages, videos = item["messages"], item["videos"]
    if not isinstance(videos, list) or len(videos) != 1 or not isinstance(videos[0], str):
        raise DataError(f"{where}: videos must list exactly one path, got {videos!r}")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{where}: messages must be a list of {{role, content}} objects")
    user = [m.get("content") for m in messages if m.get("role") == "user"]
    reply = [m.get("content") for m in messages if m.get("role") == "assistant"]
    if len(user) != 1 or len(reply) != 1 or not isinstance(user[0], str):
        raise DataError(
            f"{where}: messages need one user and one assistant turn, got roles "
            f"{[m.get('role') for m in messages]}"
        )
    question = user[0].replace("<video>", "").strip()
    if not question:
        raise DataError(f"{where}: the user turn has no question besides <video>")
    reasoning, answer = _thinking_answer(reply[0], where, "the assistant turn")
    meta: dict[str, Any] = {"reference": reply[0]}
    if reasoning:
        meta["reasoning"] = reasoning
    return {
        "id": str(item.get("id", f"pause_and_think-sft-{index}")),
        "video": videos[0],
        "problem_type": "free_form",
        "question": question,
        "answer": answer,
        "source": "pause_and_think",
        "meta": meta,
    }


CONVERTERS = {
    "reelrl": from_native,
    "video_r1": from_video_r1,
    "videoauto_r1": from_videoauto_r1,
    "pause_and_think": from_pause_and_think,
}


def _require(item: Any, where: str, keys: tuple[str, ...]) -> None:
    if not isinstance(item, dict):
        raise DataError(f"{where}: an item must be a JSON object, got {type(item).__name__}")
    missing = [k for k in keys if k not in item]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")


def _spans(times: Any, where: str) -> list[list[float]]:
    pairs = times if times and isinstance(times[0], list | tuple) else [times]
    try:
        return [[float(s), float(e)] for s, e in pairs]
    except (TypeError, ValueError):
        raise DataError(f"{where}: timestamps {times!r} are not [start, end] pairs") from None


def _span_text(span: list[float]) -> str:
    return f"[{span[0]:.1f}, {span[1]:.1f}]"


def _lettered(choices: Any, answer: str, where: str) -> tuple[list[str], str]:
    """Options as 'A. text' and the answer as a letter, whichever way the source wrote them."""
    if not isinstance(choices, list) or not choices:
        raise DataError(f"{where}: options must be a non-empty list, got {choices!r}")
    choices = [str(c) for c in choices]
    if all(_option_letter(c) for c in choices):
        options = choices
    else:
        options = [f"{chr(65 + i)}. {c}" for i, c in enumerate(choices)]
    letters = [_option_letter(o) for o in options]
    stripped = answer.strip().strip("()").rstrip(".")
    if stripped in letters:
        return options, stripped
    if answer in choices:
        return options, str(letters[choices.index(answer)])
    raise DataError(f"{where}: answer {answer!r} is neither an option letter nor an option")


# --------------------------------------------------------------------------- mixing


@dataclass
class MixState:
    """Where a mix is: the step count and, per dataset, (epoch, position in its shuffle).
    Small and JSON-able so a learner checkpoint stores it."""

    step: int = 0
    cursors: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "cursors": [list(c) for c in self.cursors]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixState:
        return cls(step=int(data["step"]), cursors=[(int(e), int(p)) for e, p in data["cursors"]])


class RecordMixer:
    """An endless, deterministic stream of records from several datasets mixed by weight.

    Step k picks a dataset from a generator seeded by (seed, k); each dataset is read in a
    permutation seeded by (seed, dataset, epoch) (in file order without `shuffle`). So the stream depends only on the seed and
    the state, and restoring a saved `MixState` continues it exactly.
    """

    def __init__(
        self,
        datasets: list[Dataset],
        seed: int,
        state: MixState | None = None,
        shuffle: bool = True,
    ):
        if not datasets or any(not d.records for d in datasets):
            raise DataError("a mix needs at least one dataset, each with records")
        self.datasets = datasets
        self.seed = seed
        self.shuffle = shuffle
        weights = np.array([d.weight for d in datasets], dtype=np.float64)
        self._cdf = np.cumsum(weights / weights.sum())
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self.state = MixState(cursors=[(0, 0)] * len(datasets))
        if state is not None:
            self.load_state(state)

    def load_state(self, state: MixState) -> None:
        if len(state.cursors) != len(self.datasets):
            raise DataError(
                f"saved data position has {len(state.cursors)} datasets, the config has "
                f"{len(self.datasets)}: resume with the same data config"
            )
        self.state = MixState(step=state.step, cursors=list(state.cursors))

    def __iter__(self) -> Iterator[Record]:
        while True:
            yield self.next()

    def next(self) -> Record:
        u = np.random.default_rng([self.seed, 0, self.state.step]).random()
        which = min(int(np.searchsorted(self._cdf, u, side="right")), len(self.datasets) - 1)
        epoch, pos = self.state.cursors[which]
        record = self.datasets[which].records[int(self._order(which, epoch)[pos])]
        pos += 1
        if pos == len(self.datasets[which].records):
            epoch, pos = epoch + 1, 0
            self._orders.pop((which, epoch - 1), None)
        self.state.cursors[which] = (epoch, pos)
        self.state.step += 1
        return record

    def take(self, n: int) -> list[Record]:
        return [self.next() for _ in range(n)]

    def _order(self, which: int, epoch: int) -> np.ndarray:
        key = (which, epoch)
        if key not in self._orders:
            n = len(self.datasets[which].records)
            rng = np.random.default_rng([self.seed, 1, which, epoch])
            self._orders[key] = rng.permutation(n) if self.shuffle else np.arange(n)
        return self._orders[key]
