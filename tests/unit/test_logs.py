import logging

from system.logs import configure


def _ours(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if getattr(h, "_reelrl", False)]


def test_configure_adds_one_handler_at_the_level_from_the_environment(monkeypatch, capsys):
    logger = logging.getLogger("reelrl")
    saved = logger.handlers[:], logger.level
    try:
        for h in _ours(logger):
            logger.removeHandler(h)
        monkeypatch.setenv("REELRL_LOG", "warning")
        configure()
        configure()
        assert len(_ours(logger)) == 1 and logger.level == logging.WARNING
        logging.getLogger("reelrl.x").info("hidden")
        logging.getLogger("reelrl.x").warning("shown %d", 7)
        err = capsys.readouterr().err
        assert "shown 7" in err and "hidden" not in err and "reelrl.x" in err
    finally:
        logger.handlers[:], logger.level = saved[0], saved[1]


def test_an_unknown_level_falls_back_to_info(monkeypatch):
    logger = logging.getLogger("reelrl")
    saved = logger.handlers[:], logger.level
    try:
        for h in _ours(logger):
            logger.removeHandler(h)
        monkeypatch.setenv("REELRL_LOG", "chatty")
        configure()
        assert logger.level == logging.INFO
    finally:
        logger.handlers[:], logger.level = saved[0], saved[1]
