import logging

import pytest

from system.config.logs import configure


@pytest.fixture
def reelrl_logger():
    """The `reelrl` logger without our handler, restored afterwards."""
    logger = logging.getLogger("reelrl")
    saved = logger.handlers[:], logger.level
    logger.handlers[:] = [h for h in logger.handlers if not getattr(h, "_reelrl", False)]
    yield logger
    logger.handlers[:], logger.level = saved


def _ours(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if getattr(h, "_reelrl", False)]


def test_configure_adds_one_handler_at_the_level_from_the_environment(
    reelrl_logger, monkeypatch, capsys
):
    monkeypatch.setenv("REELRL_LOG", "warning")
    configure()
    configure()
    assert len(_ours(reelrl_logger)) == 1 and reelrl_logger.level == logging.WARNING
    logging.getLogger("reelrl.x").info("hidden")
    logging.getLogger("reelrl.x").warning("shown %d", 7)
    err = capsys.readouterr().err
    assert "shown 7" in err and "hidden" not in err and "reelrl.x" in err


def test_an_unknown_level_falls_back_to_info(reelrl_logger, monkeypatch):
    monkeypatch.setenv("REELRL_LOG", "chatty")
    configure()
    assert reelrl_logger.level == logging.INFO


def test_the_handler_writes_to_the_current_stderr(reelrl_logger, monkeypatch):
    import io

    configure()
    replaced = io.StringIO()
    monkeypatch.setattr("sys.stderr", replaced)
    logging.getLogger("reelrl.y").warning("after the swap")
    assert "after the swap" in replaced.getvalue()


def test_library_noise_is_quieted_and_ours_is_not(reelrl_logger, monkeypatch):
    import warnings

    from system.config.logs import VLLM_RELOAD_LOGGER, quiet_libraries

    reload_logger = logging.getLogger(VLLM_RELOAD_LOGGER)
    monkeypatch.setattr(reload_logger, "level", logging.NOTSET)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_libraries()
        warnings.warn(
            "`torch.distributed.all_gather_into_tensor` is deprecated.", FutureWarning, stacklevel=1
        )
        warnings.warn("`reelrl.thing` is deprecated.", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["`reelrl.thing` is deprecated."]
    assert reload_logger.level == logging.ERROR


def test_actors_get_quiet_library_variables_unless_debug(monkeypatch):
    from system.config.logs import QUIET_ENV, library_env

    for name in (*QUIET_ENV, "REELRL_LOG"):
        monkeypatch.delenv(name, raising=False)
    assert library_env() == QUIET_ENV
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "INFO")  # the user's own setting is passed on
    assert library_env()["TORCH_CPP_LOG_LEVEL"] == "INFO"
    monkeypatch.setenv("REELRL_LOG", "debug")  # debugging: nothing quieted
    assert library_env() == {"TORCH_CPP_LOG_LEVEL": "INFO"}
