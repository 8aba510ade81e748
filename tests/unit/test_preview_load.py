"""The demo's preview load refuses what it cannot do, with exit 2 and a word on why."""

from __future__ import annotations

import pytest

from turnout.demo import preview_load


def test_without_a_preview_url_it_exits_2(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TURNOUT_PREVIEW_URL", raising=False)
    assert preview_load.main([]) == 2
    assert "TURNOUT_PREVIEW_URL is not set" in capsys.readouterr().err


def test_a_preview_url_off_this_machine_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TURNOUT_PREVIEW_URL", "http://example.com/")
    assert preview_load.main(["--requests", "1"]) == 2
    assert "may only target" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--requests", "0"], ["--rate", "-1"], ["--timeout", "99"]])
def test_options_out_of_range_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        preview_load.main(argv)
    assert exited.value.code == 2
    assert "preview_load: error:" in capsys.readouterr().err
