"""A bug that escapes a slot reaches the log file; the user reads one sentence naming it."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from PySide6.QtWidgets import QMainWindow

from studio.engine.logs import setup_logging
from studio.ui.app import _report_uncaught


def test_an_uncaught_error_is_a_sentence_in_the_status_bar_and_a_traceback_in_the_log(
        qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "studio.log"
    monkeypatch.setenv("STUDIO_LOG_FILE", str(log))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored afterwards
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    setup_logging()
    window = QMainWindow()
    qtbot.addWidget(window)
    _report_uncaught({"window": window})

    try:
        raise KeyError("layer9")
    except KeyError as error:
        sys.excepthook(type(error), error, error.__traceback__)

    shown = window.statusBar().currentMessage()
    assert shown.startswith("the app hit an error unexpectedly (KeyError: 'layer9'); the "
                            f"details are in {log.resolve()}")
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: the app hit an error") == 1
    assert "Traceback (most recent call last)" in log.read_text(encoding="utf-8")
    monkeypatch.undo()
    setup_logging()
