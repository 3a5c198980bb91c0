"""The embedded redis-server and `connect`: persistence, re-attach, and refusing bad clients."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
import redis

from system.config import QueueConfig
from system.transport.redis_server import (
    STATE_FILE,
    EmbeddedRedis,
    RedisConnectError,
    connect,
    free_port,
    no_retry,
)

pytestmark = pytest.mark.integration


def test_restart_on_same_dir_keeps_data_port_and_password(tmp_path):
    data = tmp_path / "redis"
    with EmbeddedRedis(data) as server:
        port, password = server.port, server.password
        server.client().set("k", "v")
        assert (data / "appendonly.aof").exists()
        conf = (data / "redis.conf").read_text()
        assert "appendfsync always" in conf and "bind 127.0.0.1" in conf
    state = data / STATE_FILE
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert json.loads(state.read_text()) == {"port": port, "password": password}
    with EmbeddedRedis(data) as again:
        assert (again.port, again.password) == (port, password)
        assert again.client().get("k") == b"v"


def test_resume_reattaches_to_a_running_server(tmp_path):
    with EmbeddedRedis(tmp_path) as owner:
        owner.client().set("k", "1")
        attached = EmbeddedRedis(tmp_path).start()
        assert attached.attached and attached.client().get("k") == b"1"
        attached.stop()  # does not stop a server it did not start
        assert owner.client().ping()


def test_client_without_password_is_refused(redis_server):
    anonymous = redis.Redis(host="127.0.0.1", port=redis_server.port, retry=no_retry())
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("k", "v")
    config = QueueConfig(url=redis_server.url)
    os.environ.pop(config.password_env, None)
    with pytest.raises(
        RedisConnectError, match=r"requires a password: set \$REELRL_REDIS_PASSWORD"
    ):
        connect(config)
    with pytest.raises(RedisConnectError, match="refused the password"):
        connect(config, password="wrong")


def test_connect_reads_the_password_from_the_named_env_var(redis_server):
    config = QueueConfig(url=redis_server.url, password_env="MY_REDIS_PW")
    os.environ["MY_REDIS_PW"] = redis_server.password
    assert connect(config).ping()


def test_unreachable_server_fails_fast_with_a_clear_error():
    config = QueueConfig(url=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(RedisConnectError, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
        connect(config, password="x", timeout_s=2)
    assert time.monotonic() - started < 3
    with pytest.raises(RedisConnectError, match=r"queue\.url is not set"):
        connect(QueueConfig())


def test_port_taken_by_someone_else_is_reported(tmp_path):
    with EmbeddedRedis(tmp_path / "a") as other:
        data = tmp_path / "b"
        data.mkdir()
        (data / STATE_FILE).write_text(json.dumps({"port": other.port, "password": "p"}))
        with pytest.raises(RedisConnectError, match="is taken by another process"):
            EmbeddedRedis(data).start()
