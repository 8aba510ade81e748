"""The demo app's fault settings and answers, and how the faults demo judges a run (no sockets)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from turnout.demo.app_answers import Behaviour, DemoApp, Faults, Request
from turnout.demo.faults import FAULT_NAMES, choose, first_step, overrides, write_spec
from turnout.demo.faults_cli import Deployed
from turnout.demo.faults_report import judge_run, met, short, table, what_turnout_did
from turnout.demo.load_summary import Sample
from turnout.specfile import load_spec


def get(path: bytes = b"/", flags: str = "") -> Request:
    return Request("GET", path, "u1", 0, True, flags)


@pytest.mark.parametrize(("env", "names"), [
    ({"DEMO_CRASH_AFTER": "0"}, "DEMO_CRASH_AFTER"),
    ({"DEMO_CRASH_AFTER": "2.5"}, "DEMO_CRASH_AFTER"),
    ({"DEMO_CRASH_AFTER": "-3"}, "DEMO_CRASH_AFTER"),
    ({"DEMO_FAIL": "hung"}, "DEMO_FAIL"),
    ({"DEMO_FEATURE": "f", "DEMO_FEATURE_FAIL": "start"}, "DEMO_FEATURE_FAIL"),
    ({"DEMO_FEATURE": "f", "DEMO_FEATURE_ERROR_RATE": "1.5"}, "DEMO_FEATURE_ERROR_RATE"),
    ({"DEMO_FEATURE": "f", "DEMO_FEATURE_LATENCY_MS": "slow"}, "DEMO_FEATURE_LATENCY_MS"),
    ({"DEMO_FEATURE": "f", "DEMO_FEATURE_CRASH_AFTER": "x"}, "DEMO_FEATURE_CRASH_AFTER"),
    ({"DEMO_FEATURE_FAIL": "hang"}, "DEMO_FEATURE,"),  # a fault behind no flag
    ({"DEMO_ERROR_RATE": "nan"}, "DEMO_ERROR_RATE"),
])
def test_a_bad_fault_setting_names_its_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        Behaviour.from_env(env)


def test_fault_settings_are_read() -> None:
    b = Behaviour.from_env({"DEMO_FAIL": "hang", "DEMO_CRASH_AFTER": " 7 ", "DEMO_FEATURE": "f",
                            "DEMO_FEATURE_FAIL": "yes", "DEMO_FEATURE_LATENCY_MS": "300",
                            "DEMO_FEATURE_CRASH_AFTER": "4"}, "v2")
    assert b.faults == Faults("hang", 0.0, 0.0, 7)
    assert b.feature_faults == Faults("errors", 0.0, 0.3, 4)
    assert Behaviour.from_env({"DEMO_FEATURE": "f", "DEMO_FEATURE_FAIL": "0"}).feature_faults == Faults()


def test_hang_leaves_requests_unanswered_but_health_passes() -> None:
    app = DemoApp(Behaviour("v2", fail="hang"))
    assert app.answer(get()).hang
    health = app.answer(get(b"/healthz"))
    assert (health.status, health.hang) == (200, False)


def test_crash_after_n_marks_the_nth_answer_other_than_health() -> None:
    crashes: list[int] = []
    app = DemoApp(Behaviour("v2", crash_after=3), crash=lambda: crashes.append(app.served))
    answers = []
    for path in (b"/", b"/healthz", b"/a", b"/healthz", b"/b", b"/c"):
        answers.append(app.answer(get(path)))
        app.sent(answers[-1])
    assert [a.crash for a in answers] == [False, False, False, False, True, False]
    assert crashes == [5]  # once, right after the fifth answer sent (the third that counts)


def test_faults_behind_the_flag_touch_only_the_new_code_path() -> None:
    crashes: list[str] = []
    b = Behaviour("v2", feature="f", feature_faults=Faults("errors", crash_after=2))
    app = DemoApp(b, crash=lambda: crashes.append("crash"))
    off = app.answer(get(flags="f=off"))
    assert (off.status, off.crash) == (200, False)
    first, second = app.answer(get(flags="f=on")), app.answer(get(flags="other=off, f=on"))
    assert (first.status, first.version, first.crash) == (500, b"v2+f", False)
    assert (second.status, second.crash) == (500, True)
    hang = DemoApp(Behaviour("v2", feature="f", feature_faults=Faults("hang")))
    assert hang.answer(get(flags="f=on")).hang and not hang.answer(get(flags="f=off")).hang
    slow = DemoApp(Behaviour("v2", latency_s=0.1, feature="f", feature_faults=Faults(latency_s=0.3)))
    assert slow.answer(get(flags="f=on")).delay_s == pytest.approx(0.4)
    assert slow.answer(get(flags="f=off")).delay_s == pytest.approx(0.1)


def sample(user: str, *, status: int | None = 200, version: str | None = "v1", took: float = 0.01,
           sent: float = 10.0) -> Sample:
    return Sample(sent, sent + took, status, version, user, None if status else "timeout")


def test_a_request_met_the_fault_when_it_failed_or_the_faulty_code_was_slow() -> None:
    faulty = {"v2", "v2+f"}
    assert met(sample("u1", status=504, version=None), faulty=faulty, slow_s=None)
    assert met(sample("u1", status=None, version=None), faulty=faulty, slow_s=None)
    assert not met(sample("u1", version="v2", took=0.5), faulty=faulty, slow_s=None)
    assert met(sample("u1", version="v2+f", took=0.5), faulty=faulty, slow_s=0.2)
    assert not met(sample("u1", version="v1", took=0.5), faulty=faulty, slow_s=0.2)  # the old code, slow


def deployed(code: int | None, *events: dict[str, object], held: bool = False) -> Deployed:
    return Deployed(code, 100.0, 106.0, list(events), ["some output"], held=held)


def test_the_row_says_what_turnout_did_and_who_met_the_fault() -> None:
    run = deployed(3, {"at": 101.0, "kind": "step", "message": "start"},
                   {"at": 102.5, "kind": "rollback", "message": "failed: gate failed; restoring"},
                   {"deployment": 2, "phase": "failed", "message": "gate failed"})
    samples = [sample("u1", status=500, version="v2"), sample("u1", status=500, version="v2", sent=12.0),
               sample("u2", status=None, version=None), sample("u3"), sample("u4", version="v2")]
    row = judge_run("errors", "30% 5xx", "canary", run, samples, faulty={"v2"}, slow_s=None, ended=11.0,
                    first_share=0.1, first_users=25)
    assert (row.exit_code, row.rolled_back, row.did) == (3, True, "rolled back")
    assert row.rollback_s == pytest.approx(2.5) and row.duration_s == pytest.approx(6.0)
    assert (row.users_met, row.requests_met, row.requests, row.users_met_after) == (2, 3, 5, 1)
    assert row.kinds == {"HTTP 500": 2, "timeout": 1}
    assert row.first_users == 25 and row.reason == "gate failed"
    assert row.as_json()["rollback_s"] == 2.5


@pytest.mark.parametrize(("run", "words", "back"), [
    (deployed(0), "NOT rolled back", False),
    (deployed(3, held=True), "held for a human; demo aborted", False),
    (deployed(None), "killed", False),
    (deployed(1, {"deployment": 2, "phase": "rollback-failed", "message": "x"}), "rollback failed", False),
])
def test_only_a_rollback_turnout_made_by_itself_counts_as_one(run: Deployed, words: str, back: bool) -> None:
    did, rolled_back = what_turnout_did(run)
    assert words in did and rolled_back is back


def test_choose_names_an_unknown_fault_or_strategy() -> None:
    assert len(choose((), ())) == len(FAULT_NAMES) * 5
    assert [(f.name, s) for f, s in choose(("hang", "start"), ("canary",))] == [
        ("start", "canary"), ("hang", "canary")]
    with pytest.raises(ValueError, match="--only: no fault 'typo'"):
        choose(("typo",), ())
    with pytest.raises(ValueError, match="--strategy: no strategy 'ab'"):
        choose((), ("ab",))


def test_the_toggle_puts_the_fault_behind_its_flag_where_it_can() -> None:
    faults = {f.name: f for f, _ in choose((), ("canary",))}
    hang = overrides(faults["hang"], "feature-toggle")
    assert 'run.env.DEMO_FEATURE_FAIL="hang"' in hang and 'run.env.DEMO_FEATURE="new-checkout"' in hang
    assert not any(arg.startswith("run.env.DEMO_FAIL=") for arg in hang)
    start = overrides(faults["start"], "feature-toggle")  # a start crash cannot wait for a flag
    assert 'run.env.DEMO_FAIL="start"' in start
    assert 'run.env.DEMO_FAIL="hang"' in overrides(faults["hang"], "rolling")
    assert 'strategy.kind="canary"' in overrides(faults["hang"], "canary")


def test_every_run_of_the_faults_demo_is_a_valid_spec(tmp_path: Path) -> None:
    path = write_spec(tmp_path, 18080)
    for fault, strategy in choose((), ()):
        spec = load_spec(path, overrides(fault, strategy)[1::2])  # without the "--set"s
        assert spec.strategy.kind == strategy
        assert spec.routing.timeouts.response == 1.0 and spec.health.deadline == 2.0
        env = spec.run.env
        assert env.get("DEMO_FEATURE") == ("new-checkout" if strategy == "feature-toggle" else None)


def test_the_canary_share_is_counted_in_users_as_the_router_hashes_them() -> None:
    share, users = first_step("canary")
    assert share == 0.1 and users is not None and 10 <= users <= 30  # 10% of 200 keys, give or take
    assert first_step("feature-toggle") == (5 / 200, 5) and first_step("rolling") == (None, None)


def test_only_a_rollback_that_brought_the_previous_version_back_leaves_a_clean_fleet() -> None:
    back = {"at": 101.0, "kind": "rollback", "message": "failed: x; restoring the previous version"}
    dark = {"at": 101.0, "kind": "rollback", "message": "failed: x; flag new-checkout switched off"}
    assert deployed(3, back).restored
    assert not deployed(3, dark).restored and not deployed(0).restored
    reason = "instance v2-ab-0 not healthy after 2s: http://127.0.0.1:3/healthz answered 500\n  log: x"
    assert short(reason) == "an instance not healthy after 2s: /healthz answered 500"


def test_the_table_shows_every_row_and_why_it_ended_so() -> None:
    run = deployed(0, {"at": 101.0, "kind": "gate", "message": "Successful: 200 requests, p99 <= 400 ms"})
    row = judge_run("latency", "+300 ms", "canary", run, [sample("u1", version="v2", took=0.5)],
                    faulty={"v2"}, slow_s=0.2, ended=20.0, first_share=0.1, first_users=25)
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(table([row]))
    text = console.export_text()
    assert "+300 ms" in text and "NOT rolled back" in text and "10.0% = 25 users" in text
    assert "+300 ms with canary: Successful: 200 requests, p99 <= 400 ms" in text
