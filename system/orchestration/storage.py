"""Is the run's storage where every node can see it? Checked before any training starts.

Learner ranks on any node write checkpoints into the run directory, the driver reads them
back (`latest`, the HF export the next stage starts from, `--resume`), and every rollout actor
and learner rank reads the model and the data. On a multi-node cluster that only works when
those paths are on storage mounted at the same place on every node (NFS, a ReadWriteMany
volume). `check_shared_storage` proves it: the driver writes a sentinel into the run
directory, a zero-CPU task on every node that may run a role reads it, writes its own, and
checks the model and data files; the driver then reads each node's sentinel. Any failure is a
`RunSetupError` naming the node and the path, before a single model is loaded. With one node
(a local run) there is nothing to check.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

from system.config import RunConfig, stage_config
from system.orchestration.runtime import RunSetupError

PROBE_TIMEOUT_S = 120.0
SENTINELS = ".shared"


def role_nodes(config: RunConfig) -> list[dict[str, Any]]:
    """Alive nodes that may run a learner rank or a rollout actor: those offering one of the
    configured role labels, or without labels every node with a CPU or GPU."""
    import ray

    r = config.resources
    labels = [x for x in (r.learner_node_label, r.rollout_node_label) if x]
    out = []
    for node in ray.nodes():
        res = node.get("Resources", {})
        if not node.get("Alive"):
            continue
        if any(x in res for x in labels) if labels else res.get("CPU", 0) + res.get("GPU", 0) > 0:
            out.append(node)
    return out


def needed_files(config: RunConfig) -> tuple[list[str], list[str]]:
    """(files, directories) every role node must read: the model's config.json, every
    stage's data files, the data root."""
    files = {str(Path(config.model.path) / "config.json")}
    dirs = set()
    for i in range(len(config.stages)):
        data = stage_config(config, i).data
        files.update(spec.path for spec in [*data.train, *data.eval])
        dirs.add(data.root)
    return sorted(files), sorted(dirs)


def check_shared_storage(config: RunConfig, root: Path) -> None:
    """Raise `RunSetupError` unless every role node sees the run directory (both ways), the
    model and the data at the same paths. A no-op when the driver's node is the only one."""
    import ray

    nodes = role_nodes(config)
    here = ray.get_runtime_context().get_node_id()
    if all(n["NodeID"] == here for n in nodes):
        return
    files, dirs = needed_files(config)
    print(f"checking shared storage on {len(nodes)} nodes: {root}", flush=True)
    problems = verify_shared(root, nodes, files, dirs)
    if problems:
        raise RunSetupError(_message(nodes, problems, root))


def verify_shared(
    root: Path, nodes: list[dict[str, Any]], files: list[str], dirs: list[str]
) -> dict[str, list[str]]:
    """Node id -> what that node cannot see: the driver's sentinel under `root`, its own
    sentinel seen back from here, `files`, `dirs` (empty when all is shared)."""
    shared = root / SENTINELS
    shared.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    (shared / "driver").write_text(token)
    try:
        problems = _probe_all(nodes, str(root), token, files, dirs)
        for node in nodes:
            mark = shared / node["NodeID"]
            if not problems.get(node["NodeID"]) and _read(mark) != token:
                problems.setdefault(node["NodeID"], []).append(
                    f"wrote {mark}, but the driver's node cannot read it: {root.parent} is "
                    "not shared"
                )
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    return problems


def _probe_all(
    nodes: list[dict[str, Any]], root: str, token: str, files: list[str], dirs: list[str]
) -> dict[str, list[str]]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(probe_node)
    refs = {
        n["NodeID"]: probe.options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False),
        ).remote(root, token, files, dirs)
        for n in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    out: dict[str, list[str]] = {}
    for node_id, ref in refs.items():
        if ref not in ready:
            out[node_id] = [f"did not answer the storage check in {PROBE_TIMEOUT_S:.0f}s"]
            ray.cancel(ref, force=True)
            continue
        found = ray.get(ref)
        if found:
            out[node_id] = found
    return out


def probe_node(root: str, token: str, files: list[str], dirs: list[str]) -> list[str]:
    """Runs on one node: what it cannot see (empty when everything is there)."""
    import ray

    problems = []
    shared = Path(root) / SENTINELS
    if _read(shared / "driver") != token:
        problems.append(
            f"cannot read {shared / 'driver'}, written by the driver: output_dir "
            f"({Path(root).parent}) is not on storage this node shares"
        )
    else:
        try:
            (shared / ray.get_runtime_context().get_node_id()).write_text(token)
        except OSError as exc:
            problems.append(f"cannot write into the run directory {root}: {exc.strerror}")
    problems += [f"cannot read {f}" for f in files if not Path(f).is_file()]
    problems += [f"data.root {d} is not a directory here" for d in dirs if not Path(d).is_dir()]
    return problems


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def describe_problems(nodes: list[dict[str, Any]], problems: dict[str, list[str]]) -> list[str]:
    """One line per problem, naming the node."""
    return [
        f"node {_describe(node)}: {problem}"
        for node in nodes
        for problem in problems.get(node["NodeID"], [])
    ]


def _message(nodes: list[dict[str, Any]], problems: dict[str, list[str]], root: Path) -> str:
    lines = [f"the run's storage is not shared by every node (run directory {root}):"]
    lines += [f"  {line}" for line in describe_problems(nodes, problems)]
    lines.append(
        "Put output_dir, model.path and the data on storage mounted at the same path on every "
        "node (NFS, a ReadWriteMany volume: cluster/pvc.yaml), and pass absolute paths."
    )
    return "\n".join(lines)


def _describe(node: dict[str, Any]) -> str:
    labels = sorted(
        k for k in node.get("Resources", {})
        if k not in ("CPU", "GPU", "memory", "object_store_memory")
        and not k.startswith(("node:", "accelerator_type:"))
    )  # fmt: skip
    extra = f", {', '.join(labels)}" if labels else ""
    return f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]}{extra})"
