"""`reelrl infer --model DIR (--video PATH | --image PATH ...) --question "..." [--tau T]`:
answer one video (or image) question with confidence-gated thinking and print the answer,
whether it thought, the first-pass confidence and the tokens generated."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("infer", help="answer one video question (gated thinking)")
    parser.add_argument("--model", required=True, help="HF model directory")
    shown = parser.add_mutually_exclusive_group(required=True)
    shown.add_argument("--video", help="video file")
    shown.add_argument("--image", nargs="+", help="image files, shown in this order")
    parser.add_argument("--question", required=True, help="the question")
    parser.add_argument("--options", nargs="*", default=[], help="multiple-choice options")
    parser.add_argument("--problem-type", default="multiple_choice", help="answer instruction")
    parser.add_argument("--tau", type=float, help="gating threshold (default: by family)")
    parser.add_argument("--mode", default="gated", choices=["direct", "always_think", "gated"])
    parser.add_argument("--think-tokens", type=int, default=512, help="think-pass token limit")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides a.b=c (video, image, rollout)"
    )
    parser.set_defaults(func=_run, config=None, root=None)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from system.commands.eval import load_run_config

    config = load_run_config(args)
    inference, tau = asyncio.run(_infer(config, args))
    conf = "n/a" if inference.confidence is None else f"{inference.confidence:.4f}"
    print(f"answer:     {inference.answer}")
    print(f"thought:    {'yes' if inference.thought else 'no'}")
    print(f"confidence: {conf} (tau {tau})")
    print(f"tokens:     {inference.tokens}")
    return 0


async def _infer(config, args: argparse.Namespace):
    from transformers import AutoProcessor

    from actors.engine import VLLMEngine
    from actors.gating import GatedInference, default_tau

    tau = default_tau(config.model.family, args.tau)
    from system.cli import UserError
    from system.data.video import VideoError

    processor = AutoProcessor.from_pretrained(config.model.path)
    try:
        request = build_request(config, processor, args)
    except VideoError as exc:  # an unreadable video or image: say which file, no traceback
        raise UserError(str(exc)) from None
    engine = VLLMEngine.create(config)
    try:
        runner = GatedInference(
            engine, processor.tokenizer, tau, think_max_tokens=args.think_tokens
        )
        (inference,) = await runner.run([request], args.mode)
    finally:
        engine.shutdown()
    return inference, tau


def build_request(config, processor, args: argparse.Namespace):  # -> EngineRequest
    """The question's prompt with its video (`--video`) or images (`--image`), decoded
    under the config's budget; VideoError / ImageError naming the file."""
    from actors.engine import EngineRequest
    from actors.prompts import build_messages, render_prompt
    from system.data.image import decode_images
    from system.data.video import decode_video

    family = config.model.family
    if args.image:
        images = decode_images(args.image, config.image, family)
        messages = build_messages(args.question, args.problem_type, "answer_twice",
                                  args.options, images=len(images))  # fmt: skip
        return EngineRequest(
            render_prompt(processor, messages), images=tuple(i.pixels for i in images)
        )
    video = decode_video(args.video, config.video, family)
    messages = build_messages(args.question, args.problem_type, "answer_twice", args.options)
    return EngineRequest(render_prompt(processor, messages), video.vllm_input())
