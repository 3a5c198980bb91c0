"""Helpers of the learner integration tests: real rollout groups built from a synthetic clip
and the tiny model, a recording `WeightSender` double, and the per-rank process body.

Groups are what a rollout actor would publish: the prompt rendered with actors.prompts and
tokenised by the tiny model's processor (video placeholder expanded), the clip's VisionRef,
fixed completions with rewards, and behaviour log-probs computed by the model itself.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from system.config import VideoConfig
from system.transport.protocol import RolloutGroup, RolloutSample
from system.transport.weight_sync import Bucket, Layout, unpack_bucket

BUDGET = VideoConfig(
    num_frames=4, max_frames=4, max_video_tokens=64, min_pixels=3136, max_pixels=12544
)
REWARDS = (1.0, 0.0, 1.0, 0.0)
COMPLETION_LEN = 6


def make_groups(
    model_path: Path, family: str, dataset: Path, n: int, run: str, seed: int = 0
) -> list[RolloutGroup]:
    """`n` groups of G=4 over the dataset's first records (one clip each)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from learner.collate import Collator
    from learner.grpo import token_logprobs
    from learner.sft import encode_prompt
    from system.data.records import Record
    from system.data.video import decode_video

    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    collator = Collator(processor, family)
    lines = (dataset / "train.jsonl").read_text().splitlines()
    rng = np.random.default_rng(seed)
    groups = []
    for i in range(n):
        record = Record(**json.loads(lines[i % len(lines)]))
        video = decode_video(str(dataset / record.video), BUDGET, family)
        prompt = encode_prompt(processor, record, video, "answer_twice")
        completions = [rng.integers(100, 4000, COMPLETION_LEN) for _ in REWARDS]
        draft = _group(run, prompt.numpy(), video.ref, completions, [np.zeros(6)] * 4, i)
        seqs = collator.group_sequences(draft, torch.zeros(len(REWARDS)))
        (mb,) = collator.micro_batches(seqs, len(seqs))
        with torch.no_grad():
            lp = token_logprobs(model(**mb.model_inputs()).logits, mb.targets)
        behaviour = [lp[j][mb.loss_mask[j].bool()].numpy() for j in range(len(seqs))]
        groups.append(_group(run, prompt.numpy(), video.ref, completions, behaviour, i))
    return groups


def _group(run, prompt, ref, completions, logprobs, i, images=()) -> RolloutGroup:
    samples = [
        RolloutSample(c.astype(np.int32), lp.astype(np.float32), r)
        for c, lp, r in zip(completions, logprobs, REWARDS, strict=True)
    ]
    return RolloutGroup(
        run_id=run,
        group_id=RolloutGroup.new_group_id(),
        record_id=f"rec-{i}",
        weight_version=0,
        created_at=0.0,
        finished_at=0.0,
        prompt_ids=prompt.astype(np.int32),
        vision=ref,
        images=tuple(images),
        samples=samples,
        problem_type="multiple_choice",
        answer="A",
    )


def completion_logprobs(model_path: Path, family: str, group: RolloutGroup) -> list[float]:
    """Summed log-prob of each completion of `group` under the HF model at `model_path`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from learner.collate import Collator
    from learner.grpo import token_logprobs

    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    collator = Collator(processor, family)
    seqs = collator.group_sequences(group, torch.zeros(len(group.samples)))
    (mb,) = collator.micro_batches(seqs, len(seqs))
    with torch.no_grad():
        lp = token_logprobs(model(**mb.model_inputs()).logits, mb.targets)
    return (lp * mb.loss_mask).sum(-1).tolist()


class RecordingSender:
    """WeightSender double: keeps every version's tensors (unpacked copies) and call order,
    and checks that the buckets are exactly the announced layout."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.versions: dict[int, dict[str, torch.Tensor]] = {}
        self._current: int | None = None
        self._layout: Layout | None = None
        self._sent = 0

    def start(self, version: int, layout: Layout | None = None) -> None:
        assert self._current is None, "start before the previous finish"
        self.calls.append(("start", version))
        self._current = version
        self.versions[version] = {}
        self._layout, self._sent = layout, 0

    def send_bucket(self, bucket: Bucket) -> None:
        assert self._current is not None, "send_bucket outside start/finish"
        self.calls.append(("bucket", self._current))
        if self._layout is not None:
            assert bucket.entries == self._layout[self._sent], "bucket differs from the layout"
        self._sent += 1
        for name, tensor in unpack_bucket(bucket, copy=True):
            assert name not in self.versions[self._current], f"{name} sent twice"
            self.versions[self._current][name] = tensor

    def finish(self, version: int) -> None:
        assert version == self._current
        assert self._layout is None or self._sent == len(self._layout)
        self.calls.append(("finish", version))
        self._current = None


def rank_main(rank: int, world: int, port: int, spec: dict[str, Any], out_dir: str) -> None:
    """Body of one learner rank: build the worker, maybe resume, run `spec["actions"]`,
    write what happened to out_dir/rank{rank}.pkl. Action "kill" SIGKILLs the process.

    The ranks are CPU ranks (gloo, fp32) even where CUDA is visible: two ranks on one GPU
    would make NCCL refuse the group (tests/gpu covers the learner on a GPU)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA
    torch.set_num_threads(1)
    from learner.worker import LearnerWorker
    from system.config import RunConfig

    os.environ[spec["password_env"]] = spec["password"]
    config = RunConfig.model_validate(spec["config"])
    sender = RecordingSender() if rank == 0 and spec.get("sender") else None
    worker = LearnerWorker(
        config, rank, world, "127.0.0.1", port,
        algorithm=spec.get("algorithm", "grpo"), model_path=spec["model_path"],
        checkpoint_dir=spec["checkpoint_dir"], sender=sender,
    )  # fmt: skip
    worker.config_score_group = spec.get("score_group")
    if spec.get("poison_steps"):
        from system.chaos.data_faults import NaNObjective

        worker.objective = NaNObjective(worker.objective, worker, set(spec["poison_steps"]))
    result: dict[str, Any] = {"resumed": worker.resume() if spec.get("resume") else False}
    result["start_step"] = worker.global_step
    result["metrics"] = []
    try:
        _act(worker, spec["actions"], result, out_dir, rank)
    except RuntimeError as exc:  # the errors under test: recorded, checked by the test
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["state"] = worker.state
    if sender is not None:
        result["sender_calls"] = sender.calls
        result["sent"] = sender.versions
    _write(out_dir, rank, result)
    worker.shutdown()


def _act(worker: Any, actions: list[str], result: dict[str, Any], out_dir: str, rank: int):
    for action in actions:
        if action == "step":
            result["metrics"].append(worker.step())
        elif action == "score":  # one group, or a list: every sequence of each, in order
            given = worker.config_score_group
            seqs = [
                seq
                for group in (given if isinstance(given, list) else [given])
                for seq in worker.collator.group_sequences(group, torch.zeros(len(group.samples)))
            ]
            result["scores"] = [lp.numpy() for lp in worker.logprobs(seqs)]
        elif action == "checksum":
            result.setdefault("checksums", []).append(_checksum(worker))
        elif action == "export_all":
            worker.export(include_frozen=True)
        elif action == "export":
            worker.export()
        elif action == "checkpoint":
            result.setdefault("checkpoints", []).append(str(worker.save_checkpoint()))
        elif action == "await_driver":
            # As the driver does after an interrupted step: the next step only once the
            # interrupt key is cleared.
            while worker.source.queue.interrupted():
                time.sleep(0.1)
        elif action == "kill":
            _write(out_dir, rank, result)
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            raise ValueError(f"unknown action {action}")


def _checksum(worker: Any) -> float:
    """Sum of this rank's ZeRO-3 parameter partitions (changes iff an update was applied)."""
    return float(sum(p.ds_tensor.double().sum() for p in worker.engine.module.parameters()))


def _write(out_dir: str, rank: int, result: dict[str, Any]) -> None:
    path = Path(out_dir) / f"rank{rank}.pkl"
    path.write_bytes(pickle.dumps(result))


def run_ranks(spec: dict[str, Any], out_dir: Path, world: int = 2, timeout_s: float = 400):
    """Start `world` rank processes (spawn), wait, return their results (None for a rank
    that wrote nothing) and exit codes."""
    import multiprocessing as mp

    from system.transport.redis_server import free_port

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rank*.pkl"):
        old.unlink()
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=rank_main, args=(r, world, port, spec, str(out_dir)))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"rank processes still running after {timeout_s}s"
    results = []
    for r in range(world):
        path = out_dir / f"rank{r}.pkl"
        results.append(pickle.loads(path.read_bytes()) if path.is_file() else None)
    return results, [p.exitcode for p in procs]
