"""How a load run is judged: `summarize` on synthetic samples, and `Load`'s input checks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from turnout.demo.load import Load, LoadSummary, Sample, summarize


def ok(done: float, version: str = "v1", user: str = "u0") -> Sample:
    return Sample(sent=done - 0.01, done=done, status=200, version=version, user=user, error=None)


def http(done: float, status: int, version: str | None = "v1", user: str = "u0") -> Sample:
    return Sample(
        sent=done - 0.01, done=done, status=status, version=version, user=user, error=None
    )


def broken(done: float, error: str = "connection refused", user: str = "u0") -> Sample:
    return Sample(sent=done - 0.01, done=done, status=None, version=None, user=user, error=error)


def resent(sample: Sample, lost: str = "connection closed") -> Sample:
    """`sample` as it is when its first send was lost and a second one made it."""
    return replace(sample, sends=2, lost=lost)


def test_steady_successes_have_small_gaps_and_no_failures() -> None:
    samples = [ok(0.1 * i) for i in range(1, 50)]
    s = summarize(samples, new_version="v2", start=0.0, end=5.0)
    assert s == LoadSummary(
        requests=49,
        failed=0,
        resent=0,
        longest_gap_s=pytest.approx(0.1),
        exposed_users=0,
        versions={"v1": 49},
        last_versions={"v1": 10},
        errors={},
        resent_errors={},
    )
    assert s.clean and s.problems() == "none"


def test_failures_do_not_close_a_gap() -> None:
    samples = [ok(1.0), broken(1.5), http(2.0, 503), http(2.5, 500), ok(4.0), ok(4.5)]
    s = summarize(samples, new_version="v2", start=0.0, end=5.0)
    assert s.longest_gap_s == pytest.approx(3.0)  # from 1.0 to 4.0
    assert s.failed == 3
    assert s.errors == {"connection refused": 1, "HTTP 503": 1, "HTTP 500": 1}
    assert s.requests == 6


def test_a_resent_request_is_counted_even_when_its_second_send_was_answered() -> None:
    samples = [ok(1.0), resent(ok(1.5)), resent(ok(2.0), "connection reset"), ok(2.5)]
    s = summarize(samples, new_version="v2", start=0.0, end=3.0)
    assert (s.requests, s.failed, s.resent) == (4, 0, 2)
    assert s.resent_errors == {"connection closed": 1, "connection reset": 1}
    assert s.errors == {}
    assert not s.clean
    assert s.problems() == "re-sent 2 (connection closed: 1, connection reset: 1)"
    assert [x.sends for x in samples] == [1, 2, 2, 1]


def test_a_resent_request_that_then_failed_counts_as_both() -> None:
    samples = [resent(broken(1.0, "connection refused")), http(2.0, 503)]
    s = summarize(samples, new_version="v2", start=0.0, end=3.0)
    assert (s.failed, s.resent) == (2, 1)
    assert s.errors == {"connection refused": 1, "HTTP 503": 1}
    assert s.resent_errors == {"connection closed": 1}
    assert s.problems() == "failed 2 (HTTP 503: 1, connection refused: 1); re-sent 1 (connection closed: 1)"


def test_only_failures_or_only_resends_each_make_a_run_unclean() -> None:
    failed = summarize([ok(1.0), http(1.5, 500)], new_version="v2", start=0.0, end=2.0)
    assert failed.resent == 0 and not failed.clean
    assert failed.problems() == "failed 1 (HTTP 500: 1)"
    only_resent = summarize([resent(ok(1.0))], new_version="v2", start=0.0, end=2.0)
    assert only_resent.failed == 0 and not only_resent.clean


def test_gap_counts_from_start_and_up_to_end() -> None:
    assert summarize([ok(3.0)], new_version="v2", start=0.0, end=4.0).longest_gap_s == 3.0
    assert summarize([ok(1.0)], new_version="v2", start=0.0, end=4.0).longest_gap_s == 3.0
    assert summarize([], new_version="v2", start=10.0, end=12.5).longest_gap_s == 2.5


def test_answers_outside_the_run_do_not_close_a_gap() -> None:
    samples = [ok(-1.0), ok(6.0), ok(2.0)]
    assert summarize(samples, new_version="v2", start=0.0, end=5.0).longest_gap_s == 3.0


def test_4xx_answers_are_successes_but_5xx_are_failures() -> None:
    samples = [http(1.0, 404), http(2.0, 499), http(3.0, 500)]
    s = summarize(samples, new_version="v2", start=0.0, end=4.0)
    assert s.failed == 1
    assert s.longest_gap_s == 2.0


def test_exposure_counts_users_who_saw_the_new_version_before_cutover() -> None:
    samples = [
        ok(1.0, "v2", "u1"),
        ok(1.5, "v2", "u1"),  # same user twice
        http(2.0, 500, "v2", "u2"),  # an error from the new version still exposes
        ok(2.5, "v1", "u3"),
        ok(3.0, "v2", "u4"),  # exactly at cutover: not before it
        ok(4.0, "v2", "u5"),
    ]
    assert summarize(samples, new_version="v2", start=0.0, end=5.0, until=3.0).exposed_users == 2
    assert summarize(samples, new_version="v2", start=0.0, end=5.0).exposed_users == 4
    assert summarize(samples, new_version="v3", start=0.0, end=5.0).exposed_users == 0


def test_versions_and_versions_in_the_final_second() -> None:
    samples = [ok(t / 10, "v1") for t in range(40)] + [ok(4.0 + t / 10, "v2") for t in range(10)]
    samples.append(broken(4.95))
    s = summarize(samples, new_version="v2", start=0.0, end=5.0)
    assert s.versions == {"v1": 40, "v2": 10}
    assert s.last_versions == {"v2": 10}


def test_summary_of_a_load_that_never_started_is_empty() -> None:
    s = Load("http://127.0.0.1:9/").summary(new_version="v2")
    assert (s.requests, s.failed, s.resent, s.exposed_users, s.versions) == (0, 0, 0, 0, {})


def test_load_summary_uses_its_samples_and_window() -> None:
    load = Load("http://localhost:9/")
    load.started, load.ended = 100.0, 104.0
    load.samples.extend([ok(101.0, "v2", "u7"), broken(102.0), resent(ok(103.0))])
    load.mark("cutover")
    s = load.summary(new_version="v2", until=load.marks["cutover"])
    assert (s.requests, s.failed, s.resent, s.exposed_users) == (3, 1, 1, 1)
    assert s.longest_gap_s == 2.0


def test_wall_maps_monotonic_times_from_the_clocks_read_at_start() -> None:
    load = Load("http://localhost:9/")
    with pytest.raises(RuntimeError):
        load.wall(1.0)
    load.started, load.started_wall = 100.0, 1_700_000_000.0
    assert load.wall(102.5) == 1_700_000_002.5
    assert load.wall(99.0) == 1_699_999_999.0


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/",
        "http://10.0.0.1:8080/",
        "http://127.0.0.2:8080/",
        "https://127.0.0.1:8443/",
        "http://[::1]:8080/",
        "ftp://localhost/",
    ],
)
def test_only_local_http_targets_are_allowed(url: str) -> None:
    with pytest.raises(ValueError):
        Load(url)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0},
        {"users": 0},
        {"connections": 0},
        {"timeout": 0},
        {"max_requests": -1},
        {"user_header": "X-User\r\nEvil"},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Load("http://127.0.0.1:8080/", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["http://10.1.2.3:80/", "http://example.com/", "http://8.8.8.8/",
                                 "https://127.0.0.1/"])
def test_load_targets_only_this_machine(url: str) -> None:
    with pytest.raises(ValueError, match="load"):
        Load(url)


def test_load_may_target_a_private_test_network_when_asked() -> None:
    for url in ("http://172.30.1.10:8080/", "http://10.1.2.3/", "http://192.168.7.7/"):
        assert Load(url, private_network=True).url == url
    for url in ("http://8.8.8.8/", "http://web1.internal/", "http://172.32.0.1/"):
        with pytest.raises(ValueError, match="private IPv4"):
            Load(url, private_network=True)
