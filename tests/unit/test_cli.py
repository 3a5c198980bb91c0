"""The CLI parses before any heavy import, so `reelrl --help` stays instant."""

from __future__ import annotations

import subprocess
import sys

import pytest

from system.cli import build_parser, main

HEAVY = ["torch", "transformers", "vllm", "ray", "deepspeed", "redis", "decord", "numpy"]


def test_building_the_parser_imports_nothing_heavy():
    code = (
        "import sys; from system.cli import build_parser; build_parser(); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in ("config", "tiny-model", "bench"):
        assert name in text


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["no-such-command"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_chaos_json_keeps_stdout_for_the_report_alone():
    # Ray forwards worker logs to the driver's stdout, some after the run has ended.
    code = (
        "import os\n"
        "from system.commands.chaos import _report_only_on_stdout\n"
        "with _report_only_on_stdout() as out:\n"
        "    print('run output')\n"
        "    print('{\"report\": 1}', file=out)\n"
        "os.write(1, b'late worker log\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout == '{"report": 1}\n'
    assert "run output" in proc.stderr and "late worker log" in proc.stderr


def test_infer_builds_an_image_request_and_names_a_bad_file(tiny_qwen2_5_vl, tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    from system.cli import parse
    from system.commands.eval import load_run_config
    from system.commands.infer import build_request
    from system.data.image import ImageError

    pictures = []
    for i in range(2):
        pictures.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((100, 120, 3), 40 * i, dtype=np.uint8)).save(pictures[-1])
    args = parse(["infer", "--model", str(tiny_qwen2_5_vl), "--image", *pictures,
                  "--question", "Which way did it move?", "--options", "A. left", "B. right"])  # fmt: skip
    config = load_run_config(args)
    request = build_request(config, AutoProcessor.from_pretrained(tiny_qwen2_5_vl), args)
    assert request.video is None and len(request.images) == 2
    assert request.prompt.count("<|image_pad|>") == 2 and "<|video_pad|>" not in request.prompt
    with pytest.raises(SystemExit):  # --video and --image together
        parse(["infer", "--model", "m", "--video", "v.mp4", "--image", "a.png", "--question", "q"])
    args.image = [str(tmp_path / "missing.png")]
    with pytest.raises(ImageError, match=r"missing\.png: image file not found"):
        build_request(config, AutoProcessor.from_pretrained(tiny_qwen2_5_vl), args)
