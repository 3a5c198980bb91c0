"""Config loading: every shipped YAML validates; extends, overrides and stages resolve; bad
configs are refused with the dotted field path."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from system.cli import main as cli_main
from system.config import ConfigError, RunConfig, load_config, parse_override, stage_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml"))


def test_configs_directory_is_not_empty():
    names = {p.name for p in CONFIGS}
    assert {"base.yaml", "debug_cpu.yaml", "videoauto_r1_qwen2_5_vl_7b.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    for i in range(len(config.stages)):
        assert stage_config(config, i).stages[0].name == config.stages[i].name
    # A restartable actor's constructor arguments (the config and small integers) must stay
    # inline in Ray's creation spec (under 100 KiB); a larger one goes to the object store,
    # which may free it before a restart needs it.
    assert len(pickle.dumps(config)) < 100 * 1024


def test_videoauto_r1_recipes_carry_the_paper_settings():
    for name, family, tau in [
        ("videoauto_r1_qwen2_5_vl_7b.yaml", "qwen2_5_vl", 0.97),
        ("videoauto_r1_qwen3_vl_8b.yaml", "qwen3_vl", 0.98),
    ]:
        c = load_config(Path(CONFIGS[0]).parent / name)
        assert c.model.family == family and c.model.freeze_vision
        assert c.learner.grpo.beta == 0.01 and c.learner.optimizer.lr == 1e-6
        assert c.video.max_frames == 256 and c.video.max_video_tokens == 4096
        r = c.rewards
        assert (r.format, r.w_a1, r.w_a2, r.w_format, r.w_fallback, r.compat) == (
            "answer_twice",
            0.9,
            1.1,
            1.0,
            0.3,
            "videoauto_r1",
        )
        assert c.rollout.filter_equal_rewards and c.eval.tau == tau


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_extends_merges_deeply_and_child_wins(tmp_path):
    _write(tmp_path, "a.yaml", "learner:\n  optimizer:\n    lr: 0.1\n    warmup_steps: 5\n")
    child = _write(tmp_path, "b.yaml", "extends: a.yaml\nlearner:\n  optimizer:\n    lr: 0.2\n")
    config = load_config(child)
    assert config.learner.optimizer.lr == 0.2
    assert config.learner.optimizer.warmup_steps == 5


def test_extends_cycle_is_reported(tmp_path):
    _write(tmp_path, "a.yaml", "extends: b.yaml\n")
    b = _write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends cycle"):
        load_config(b)


def test_overrides_are_parsed_as_yaml(tmp_path):
    path = _write(tmp_path, "c.yaml", "name: x\n")
    config = load_config(
        path, ["learner.optimizer.lr=1e-5", "rollout.sampling.stop=[a, b]", "queue.url=null"]
    )
    assert config.learner.optimizer.lr == 1e-5
    assert config.rollout.sampling.stop == ["a", "b"]
    assert config.queue.url is None
    assert parse_override("a.b= true ") == ("a.b", True)
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        parse_override("no-equals-sign")


@pytest.mark.parametrize(
    ("override", "field", "phrase"),
    [
        ("learner.optimizer.lrr=1", "learner.optimizer.lrr", "unknown key"),
        ("learner.optimizer.lr=-1", "learner.optimizer.lr", "greater than 0"),
        ("rollout.group_size=1", "rollout.group_size", "greater than or equal to 2"),
        ("video.min_frames=300", "video", "min_frames must be <= max_frames"),
        ("rollout.sampling.top_p=abc", "rollout.sampling.top_p", "valid number"),
        ("model.family=llama", "model.family", "qwen2_5_vl"),
        ("rollout.sampling.temperature=0", "(top level)", "rollout.sampling.temperature"),
        ("learner.grpo.kl_estimator=k1", "learner.grpo.kl_estimator", "expected gradient is zero"),
        ("learner.grpo.iterations=0", "learner.grpo.iterations", "greater than or equal to 1"),
    ],
)
def test_bad_values_name_the_field(tmp_path, override, field, phrase):
    path = _write(tmp_path, "d.yaml", "name: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    message = str(info.value)
    assert f"{field}:" in message and phrase in message


def test_bad_stage_override_fails_at_load(tmp_path):
    path = _write(
        tmp_path,
        "e.yaml",
        "stages:\n  - name: s\n    algorithm: sft\n    total_steps: 1\n"
        "    overrides: {learner.optimizer.lr: -2}\n",
    )
    with pytest.raises(ConfigError, match=r"stages\[0\].*\n.*learner\.optimizer\.lr"):
        load_config(path)


def test_stage_overrides_apply_only_to_their_stage():
    config = load_config(CONFIGS[0].parent / "reasonact_3b.yaml")
    first, last = stage_config(config, 0), stage_config(config, 2)
    assert first.learner.optimizer.lr == 1e-5
    assert first.data.train[0].path.endswith("reasoning_text_sft.jsonl")
    assert last.learner.optimizer.lr == 1e-6 and last.rollout.t_grpo.enabled


def test_cli_config_show_prints_resolved_yaml_and_refuses_bad(capsys, tmp_path):
    debug = str(CONFIGS[0].parent / "debug_cpu.yaml")
    assert cli_main(["config", "show", debug, "rollout.group_size=6"]) == 0
    assert "group_size: 6" in capsys.readouterr().out
    assert cli_main(["config", "show", debug, "nope.key=1"]) == 2
    assert "nope: unknown key" in capsys.readouterr().err
    assert cli_main(["config", "show", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_overrides_step_into_list_items(tmp_path):
    path = _write(
        tmp_path, "l.yaml",
        "name: x\nstages:\n  - {name: a, algorithm: sft, total_steps: 2}\n"
        "  - {name: b, algorithm: grpo, total_steps: 3}\n",
    )  # fmt: skip
    config = load_config(path, ["stages[1].total_steps=9", "stages[-2].name=first"])
    assert [(s.name, s.total_steps) for s in config.stages] == [("first", 2), ("b", 9)]
    with pytest.raises(ConfigError, match=r"stages has 2 items, no \[2\]"):
        load_config(path, ["stages[2].total_steps=1"])
    with pytest.raises(ConfigError, match=r"name has no items"):
        load_config(path, ["name[0]=y"])


def test_the_run_seed_drives_data_order_and_sampling_unless_set_apart(tmp_path):
    path = _write(tmp_path, "s.yaml", "name: x\n")
    config = load_config(path, ["seed=3"])
    assert (config.data_seed, config.rollout_seed) == (3, 3)
    config = load_config(path, ["seed=3", "data.shuffle_seed=5", "rollout.seed=7"])
    assert (config.data_seed, config.rollout_seed) == (5, 7)
    assert load_config(path).data_seed == 0
