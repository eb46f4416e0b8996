"""Progress reporting: plain lines at a bounded rate, the tqdm bar, quiet mode."""

from __future__ import annotations

import io

import pytest

from pgolf import progress
from pgolf.progress import Progress, format_duration, progress_bar, progress_line


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def not_quiet():
    progress.set_quiet(False)
    yield
    progress.set_quiet(False)


def test_format_duration():
    assert format_duration(12.4) == "12s"
    assert format_duration(185) == "3m05s"
    assert format_duration(2 * 3600 + 7 * 60 + 30) == "2h07m"


def test_progress_line_with_total_postfix_and_without_total():
    line = progress_line("build", 40, 100, 12.0, postfix={"loss": 3.21456, "tokens/s": 51234.7})
    assert line == "build: 40/100 (40%) elapsed 12s eta 18s loss=3.215 tokens/s=51235"
    assert progress_line("fetch", 2_500_000, None, 5.0, unit="B") == "fetch: 2.5 MB elapsed 5s"
    assert progress_line("scan", 7, None, 61.0, unit="docs") == "scan: 7 docs elapsed 1m01s"


def test_plain_lines_every_tenth_and_on_close():
    stream = io.StringIO()
    clock = FakeClock()
    with Progress(100, "data", style="lines", stream=stream, clock=clock, line_interval_seconds=1e9) as reporter:
        for _ in range(100):
            clock.now += 0.5
            reporter.update(1)
    lines = stream.getvalue().splitlines()
    # One line at each 10% (10, 20, ..., 100), none repeated on close since 100/100 was printed.
    assert len(lines) == 10
    assert lines[3] == "data: 40/100 (40%) elapsed 20s eta 30s"
    assert lines[-1] == "data: 100/100 (100%) elapsed 50s"


def test_plain_lines_time_interval_and_big_jumps():
    stream = io.StringIO()
    clock = FakeClock()
    reporter = Progress(1000, "eval", style="lines", stream=stream, clock=clock, line_interval_seconds=10)
    reporter.update(1)  # no threshold, no time passed: silent
    clock.now += 11
    reporter.update(1)  # time interval reached
    reporter.update(500)  # jumps past 10%..50%: a single line
    reporter.set_postfix({"bpb": 1.23456})
    clock.now += 1
    reporter.update(10)  # 51.2%, under the next 60% threshold and within the interval
    reporter.close()  # the final count was not shown yet
    reporter.close()  # closing twice prints nothing more
    assert stream.getvalue().splitlines() == [
        "eval: 2/1000 (0%) elapsed 11s eta 1h31m",
        "eval: 502/1000 (50%) elapsed 11s eta 11s",
        "eval: 512/1000 (51%) elapsed 12s eta 11s bpb=1.235",
    ]


def test_bar_counts_and_shows_postfix():
    stream = io.StringIO()
    with progress_bar(50, "train", unit="step", style="bar", stream=stream, mininterval=0) as reporter:
        for _ in range(20):
            reporter.update(2)
        reporter.set_postfix({"loss": 2.5})
    assert reporter.count == 40
    output = stream.getvalue()
    assert "40/50" in output and "loss=2.5" in output


def test_non_terminal_stream_gets_plain_lines_and_write_passes_through():
    stream = io.StringIO()  # isatty() is False
    reporter = progress_bar(4, "fetch", stream=stream)
    assert reporter.style == "lines"
    reporter.write("step:1 train_loss:7.0")
    reporter.update(4)
    reporter.close()
    assert stream.getvalue().splitlines() == ["step:1 train_loss:7.0", "fetch: 4/4 (100%) elapsed 0s"]


def test_quiet_and_disabled_print_nothing_but_still_count():
    stream = io.StringIO()
    disabled = progress_bar(10, "rank1", enabled=False, stream=stream)
    progress.set_quiet(True)
    quiet = progress_bar(10, "quiet", stream=stream)
    forced = progress_bar(10, "forced", enabled=True, stream=stream, style="lines")
    for reporter in (disabled, quiet, forced):
        reporter.update(10)
        reporter.write("hello")
        reporter.close()
    assert disabled.count == quiet.count == 10
    assert stream.getvalue().splitlines() == ["forced: 10/10 (100%) elapsed 0s", "hello"]


def test_total_learned_late_as_with_tqdm():
    stream = io.StringIO()
    clock = FakeClock()
    lines = Progress(None, "eval", unit="window", style="lines", stream=stream, clock=clock,
                     line_interval_seconds=1e9)
    lines.total = 4
    lines.update(4 - lines.n)
    lines.close()
    assert stream.getvalue().splitlines() == ["eval: 4/4 (100%) elapsed 0s"]
    bar_stream = io.StringIO()
    bar = Progress(None, "eval", unit="window", style="bar", stream=bar_stream, mininterval=0)
    bar.total = 8
    bar.update(3)
    bar.close()
    assert bar.n == 3 and "3/8" in bar_stream.getvalue()
