"""Image records: sizing under the token budget, decoding and the hash-checked re-decode, the
record's validation and kind, the prompt's image parts, the learner's image inputs (pad count
checked against the predicted tokens), and the vision-tower padding that keeps ZeRO-3 ranks in
step when a stage mixes kinds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from actors.prompts import build_messages
from learner.collate import Collator, GroupRejected
from learner.sft import encode_prompt, sft_sequence, sft_target
from learner.vision_padding import kinds_of, missing, pad_vision, padded
from system.config import ImageConfig, VideoConfig
from system.data.image import ImageError, decode_image_ref, decode_images, image_size
from system.data.records import DataError, Record, parse_record, record_kind
from system.data.synthetic_image import generate_images

SMALL = ImageConfig(max_images=2, max_image_tokens=32, min_pixels=784, max_pixels=12544)


def _png(path: Path, h: int, w: int, seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def test_image_size_is_on_the_grid_and_within_the_shared_budget():
    one = ImageConfig(max_image_tokens=1024, min_pixels=3136, max_pixels=1024 * 28 * 28)
    assert image_size(480, 640, 1, one, "qwen2_5_vl") == (476, 644)  # nearest multiples of 28
    # Four images share 1024 tokens: each at most 256 tokens, the aspect ratio kept.
    h, w = image_size(480, 640, 4, one, "qwen2_5_vl")
    assert h % 28 == w % 28 == 0 and (h // 28) * (w // 28) <= 256
    assert abs(w / h - 640 / 480) < 0.15
    assert image_size(10, 10, 1, one, "qwen2_5_vl") == (56, 56)  # min_pixels lifts a tiny one
    h, w = image_size(480, 640, 1, one, "qwen3_vl")
    assert h % 32 == w % 32 == 0
    with pytest.raises(ValueError, match="max_image_tokens=3 cannot give 4 images"):
        image_size(28, 28, 4, ImageConfig(max_image_tokens=3), "qwen2_5_vl")


def test_decode_images_and_reference_redecode(tmp_path):
    paths = [_png(tmp_path / "a.png", 100, 150, 1), _png(tmp_path / "b.png", 60, 60, 2)]
    images = decode_images(paths, SMALL, "qwen2_5_vl")
    for image in images:
        h, w = image.pixels.shape[:2]
        assert (h, w) == (image.ref.height, image.ref.width) and h % 28 == w % 28 == 0
        assert image.tokens == (h // 28) * (w // 28) and image.pixels.dtype == np.uint8
    assert sum(i.tokens for i in images) <= SMALL.max_image_tokens
    again = decode_image_ref(images[0].ref, "qwen2_5_vl")
    np.testing.assert_array_equal(again.pixels, images[0].pixels)
    _png(tmp_path / "a.png", 100, 150, 7)  # the file changed after the rollout
    with pytest.raises(ImageError, match=r"a\.png: re-decoded pixels differ"):
        decode_image_ref(images[0].ref, "qwen2_5_vl")


def test_unusable_images_raise_naming_the_file(tmp_path):
    with pytest.raises(ImageError, match=r"gone\.png: image file not found"):
        decode_images([str(tmp_path / "gone.png")], SMALL, "qwen2_5_vl")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: image file is empty"):
        decode_images([str(tmp_path / "empty.png")], SMALL, "qwen2_5_vl")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"bad\.png: cannot decode image"):
        decode_images([str(tmp_path / "bad.png")], SMALL, "qwen2_5_vl")
    three = [_png(tmp_path / f"{i}.png", 28, 28, i) for i in range(3)]
    with pytest.raises(ImageError, match=r"3 images, over image\.max_images=2"):
        decode_images(three, SMALL, "qwen2_5_vl")


def test_image_records_validate_and_say_their_kind():
    base = {"id": "r", "problem_type": "numerical", "question": "How many?", "answer": "2"}
    assert record_kind(Record(**base, images=["a.png", "b.png"])) == "image"
    assert record_kind(Record(**base, video="v.mp4")) == "video"
    assert record_kind(Record(**base)) == "text"
    with pytest.raises(DataError, match=r"f\.jsonl:3: .*a video or images, not both"):
        parse_record({**base, "video": "v.mp4", "images": ["a.png"]}, "f.jsonl:3")
    with pytest.raises(DataError, match="images: List should have at least 1 item"):
        parse_record({**base, "images": []}, "f.jsonl:4")


def test_messages_put_the_images_before_the_question():
    parts = build_messages("Which way?", "multiple_choice", "answer_twice", images=2)[1]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"]
    parts = build_messages("Which way?", "numerical", "answer_twice")[1]["content"]
    assert [p["type"] for p in parts] == ["video", "text"]


def test_learner_image_inputs_match_the_prompt(tiny_qwen2_5_vl, tmp_path):
    from transformers import AutoProcessor

    generate_images(tmp_path, 3, 0, seed=0)
    rows = (tmp_path / "image_train.jsonl").read_text().splitlines()
    record = Record(**json.loads(rows[2]))  # the `moved` task: two images
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    collator = Collator(processor, "qwen2_5_vl", tokens_per_second=2.0)
    seq = sft_sequence(collator, record, sft_target(record, "answer_twice"), VideoConfig(), str(tmp_path),
                       "answer_twice", SMALL)  # fmt: skip
    assert seq.images is not None and seq.vision is None
    assert seq.images.image_grid_thw.shape == (2, 3)
    pads = int((seq.input_ids == collator.image_pad_id).sum())
    assert pads == seq.images.tokens == int(seq.images.image_grid_thw.prod(1).sum()) // 4
    batch = collator.collate([seq])
    assert set(batch.vision) == {"pixel_values", "image_grid_thw"}
    assert batch.position_ids is not None and batch.position_ids.shape[1:] == (
        1,
        seq.input_ids.numel(),
    )
    # A prompt tokenised for other images (one image fewer) is rejected, not trained on.
    images = decode_images([str(tmp_path / p) for p in record.images], SMALL, "qwen2_5_vl")
    one = encode_prompt(processor, record.model_copy(update={"images": record.images[:1]}),
                        None, "answer_twice", images[:1])  # fmt: skip
    with pytest.raises(GroupRejected, match="image-pad tokens but the re-decoded image gives"):
        collator.check_prompt(one, None, seq.images)


def test_vision_padding_adds_the_tower_calls_a_micro_batch_lacks(tiny_qwen2_5_vl):
    from transformers import AutoModelForImageTextToText

    video = {"pixel_values_videos": torch.zeros(1), "video_grid_thw": torch.zeros(1)}
    both = {**video, "pixel_values": torch.zeros(1)}
    assert kinds_of({}) == [0.0, 0.0] and kinds_of(both) == [1.0, 1.0]
    assert missing({}, [1.0, 1.0]) == 2 and missing(video, [1.0, 1.0]) == 1
    assert missing(video, [0.0, 1.0]) == 0 and missing({}, [0.0, 0.0]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl)
    calls = []
    model.model.visual.register_forward_hook(lambda *_: calls.append(1))
    out = pad_vision(model, 2, "cpu")
    assert len(calls) == 2 and out is not None and out.requires_grad
    (0.0 * out).backward()  # through the tower: its trainable projector gets a (zero) grad
    grads = [p.grad for p in model.model.visual.merger.parameters()]
    assert all(g is not None and not g.any() for g in grads)
    assert pad_vision(model, 0, "cpu") is None
    # Inside `padded`, a forward runs the tower after the token embedding (where the images
    # would be) and its logits are unchanged.
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    calls.clear()
    order = []
    model.get_input_embeddings().register_forward_hook(lambda *_: order.append("embed"))
    model.model.visual.register_forward_hook(lambda *_: order.append("visual"))
    with torch.no_grad(), padded(model, 1):
        again = model(input_ids=ids).logits
    assert order == ["embed", "visual"] and len(calls) == 1
    torch.testing.assert_close(again, plain, rtol=0, atol=0)
    with torch.no_grad():
        model(input_ids=ids)
    assert len(calls) == 1  # the hook is gone after the block
