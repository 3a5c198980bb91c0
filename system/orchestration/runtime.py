"""What a run needs before any actor starts: its directory, prepared assets (tiny model,
synthetic data), a Ray connection, the Redis behind the queue, and a stop flag for signals.

Every failure here names what is wrong and what to do, within seconds: an unreachable Ray or
Redis address is checked with a short socket probe before any client library gets to retry
for minutes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from system.config import RunConfig, dump_config

log = logging.getLogger("reelrl.driver")

# Local Ray instances get at least this many logical CPUs, whatever the machine has: the CPU
# debug topology (2 learner ranks + 1 engine + driver-side tasks) must be schedulable on a
# 2-core laptop. Logical CPUs only gate scheduling; the OS shares the real cores.
MIN_LOCAL_CPUS = 8


class RunSetupError(RuntimeError):
    """The run cannot start: the message says what is missing or unreachable."""


@dataclass(frozen=True)
class RunDirs:
    """The layout of a run directory."""

    root: Path

    @property
    def redis(self) -> Path:
        return self.root / "redis"

    def stage(self, name: str) -> Path:
        return self.root / "stages" / name

    def checkpoints(self, name: str) -> Path:
        return self.stage(name) / "checkpoints"

    def done_marker(self, name: str) -> Path:
        return self.stage(name) / "DONE"


def create_run_dir(config: RunConfig, resume: str | None) -> RunDirs:
    """A new `<output_dir>/<name>-<UTC time>` directory, or the given one when resuming."""
    if resume is not None:
        root = Path(resume)
        if not (root / "config.yaml").is_file():
            raise RunSetupError(
                f"--resume {resume}: not a run directory (no config.yaml); pass the directory "
                "a previous `reelrl train` printed"
            )
        return RunDirs(root)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    root = Path(config.output_dir) / f"{config.name}-{stamp}"
    suffix = 1
    while root.exists():
        suffix += 1
        root = Path(config.output_dir) / f"{config.name}-{stamp}-{suffix}"
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(dump_config(config))
    return RunDirs(root)


def prepare_assets(config: RunConfig) -> None:
    """Build the tiny model and the synthetic dataset when the config asks for them and they
    are missing; otherwise check that the model directory exists."""
    model = Path(config.model.path)
    if not (model / "config.json").is_file():
        if config.model.build_tiny is None:
            raise RunSetupError(
                f"model.path={config.model.path}: no config.json there; point model.path at an "
                "HF model directory, or set model.build_tiny to build a random one"
            )
        from system.data.tiny_model import build_tiny_model

        print(f"building tiny {config.model.family} model in {model}", flush=True)
        tmp = model.with_name(model.name + f".tmp{os.getpid()}")
        build_tiny_model(config.model.family, tmp, size=config.model.build_tiny, seed=config.seed)
        tmp.rename(model)
    if config.data.synthetic is not None:
        from system.data.synthetic import ensure_synthetic
        from system.data.synthetic_assist import ensure_assist
        from system.data.synthetic_image import ensure_images

        ensure_synthetic(config.data.synthetic)
        ensure_assist(config.data.synthetic)
        ensure_images(config.data.synthetic)
    for spec in [*config.data.train, *config.data.eval]:
        if not Path(spec.path).is_file():
            raise RunSetupError(f"dataset {spec.path} does not exist (data.train / data.eval)")


def probe_address(what: str, host: str, port: int, timeout_s: float = 3.0) -> None:
    """Fail fast with a clear message when nothing listens at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise RunSetupError(
            f"{what} at {host}:{port} is unreachable ({exc.strerror or exc}); check the "
            "address and that the server is running"
        ) from None


def preflight(config: RunConfig) -> None:
    """Probe the configured Ray and Redis addresses before any slow preparation."""
    address = config.resources.ray_address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        parsed = urlparse(address if "://" in address else f"ray://{address}")
        if parsed.hostname and parsed.port:
            probe_address("Ray", parsed.hostname, parsed.port)
    if config.queue.url is not None:
        parsed = urlparse(config.queue.url)
        if parsed.hostname and parsed.port:
            probe_address("Redis", parsed.hostname, parsed.port)


def connect_ray(config: RunConfig, min_cpus: float) -> str:
    """Join the configured cluster (resources.ray_address, else RAY_ADDRESS — set by
    `ray job submit` and KubeRay), else start a local instance. Returns a description."""
    import ray

    address = config.resources.ray_address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return "already connected"
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"Ray cluster at {address}"
    cpus = max(os.cpu_count() or 1, MIN_LOCAL_CPUS, int(min_cpus + 0.999))
    # "local": a new instance even when `ray start` left a cluster address file behind.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    return f"local Ray ({cpus} logical CPUs)"


JOB_COPY = ("runtime_resources", "working_dir_files")
"""Path parts of Ray's unpacked copy of a job's `--working-dir`: one per node, unpacked again
when the node's runtime-env agent sets the job up (the old copy deleted under any process
inside it) and garbage-collected when no job uses it."""


def in_job_copy(path: str | Path) -> bool:
    return all(part in Path(path).parts for part in JOB_COPY)


def refuse_job_copy(config: RunConfig, resume: str | None) -> None:
    """Refuse to write into Ray's copy of the job's working directory (a relative path under
    `ray job submit --working-dir .`): the run directory (`output_dir`, `--resume`), a tiny
    model the run builds (`model.path`), synthetic data it generates (`data.synthetic.out`).
    Ray deletes that copy, and each node has its own, so checkpoints and `--resume` would be
    lost and other nodes would not see the files."""
    written = {"--resume" if resume is not None else "output_dir": resume or config.output_dir}
    if config.model.build_tiny is not None:
        written["model.path"] = config.model.path
    if config.data.synthetic is not None:
        written["data.synthetic.out"] = config.data.synthetic.out
    inside = {field: path for field, path in written.items() if in_job_copy(path)}
    if inside:
        fields = ", ".join(f"{field}={path}" for field, path in inside.items())
        raise RunSetupError(
            f"{fields}: inside Ray's copy of the job's working directory, which Ray deletes "
            "and every node unpacks separately; the run's files would be lost. Pass "
            "--base-dir on storage every node mounts at the same path (e.g. --base-dir "
            "/mnt/shared; cluster/pvc.yaml), or absolute paths"
        )


def leave_job_copy() -> None:
    """A driver started by `ray job submit` runs inside Ray's copy of the working directory,
    which joining the cluster can replace under it (Python's own relative lookups then fail
    with FileNotFoundError): once every path is absolute, it works from the temp directory."""
    try:
        here = os.getcwd()
    except FileNotFoundError:
        here = None
    if here is None or in_job_copy(here):
        os.chdir(tempfile.gettempdir())


@dataclass
class QueueBackend:
    """The Redis a run's queue lives in, and how actors reach it."""

    url: str
    password: str | None
    embedded: Any | None = None
    supervisor: Any | None = None
    """Restarts the embedded server when it dies (`RedisSupervisor`)."""

    def actor_env(self, config: RunConfig) -> dict[str, str]:
        """Environment variables every actor needs to connect."""
        return {config.queue.password_env: self.password} if self.password else {}

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.embedded is not None:
            self.embedded.stop()


def start_queue_backend(config: RunConfig, dirs: RunDirs) -> QueueBackend:
    """The embedded Redis of local runs (re-attached on resume, restarted by a supervisor
    when it dies), or the configured server (its password from the environment variable
    `queue.password_env`), verified."""
    from system.transport.redis_server import (
        EmbeddedRedis,
        RedisConnectError,
        RedisSupervisor,
        connect,
    )

    try:
        if config.queue.url is None:
            server = EmbeddedRedis(dirs.redis).start()
            # Actors started from this process read the password where cluster runs keep it.
            os.environ[config.queue.password_env] = server.password or ""
            supervisor = RedisSupervisor(server).start()
            return QueueBackend(server.url, server.password, server, supervisor)
        connect(config.queue).ping()
    except RedisConnectError as exc:
        raise RunSetupError(str(exc)) from None
    return QueueBackend(url=config.queue.url, password=os.environ.get(config.queue.password_env))


class StopFlag:
    """SIGINT/SIGTERM ask the run to stop after the current step (final checkpoint, clean
    shutdown); a second signal interrupts at once."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            raise KeyboardInterrupt(f"second {name}")
        self.reason = name
        print(f"{name}: finishing the current step, then a final checkpoint", flush=True)
