"""Progress reporting for data builds, downloads, training and evaluation.

On a terminal a tqdm bar with ETA; anywhere else (a log file, a pipe, a batch
job) plain lines at a bounded rate, such as

    train: 40/100 (40%) elapsed 12s eta 18s loss=3.214 tokens/s=51234

so logs stay readable and grep-able instead of filling with carriage returns.
Quiet mode prints nothing. Whether output is quiet is decided by the caller
(the CLI calls `set_quiet`, a non-main rank passes `enabled=False`); this
module reads no environment variables.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Mapping, TextIO

_quiet = False
_TOLERANCE = 1e-9  # 3 * 0.1 is 0.30000000000000004: without slack the 30% line would wait for 31


def set_quiet(quiet: bool) -> None:
    """Process-wide switch, set once by the CLI: quiet silences every progress reporter."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m: short, fixed style for plain progress lines."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_amount(value: float, unit: str) -> str:
    """Counts as plain integers, seconds (unit "s") to one decimal; byte counts (unit "B") with a decimal prefix."""
    if unit == "B":
        for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.1f} {prefix}B"
        return f"{int(value)} B"
    if unit == "s":
        return f"{value:.1f}s"
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else str(int(value))


def format_postfix_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def progress_line(desc: str, count: float, total: float | None, elapsed: float, unit: str = "it",
                  postfix: Mapping[str, Any] | None = None) -> str:
    """One plain progress line (pure): `desc: 40/100 (40%) elapsed 12s eta 18s key=value ...`."""
    if total:
        parts = [f"{desc}: {format_amount(count, unit)}/{format_amount(total, unit)} "
                 f"({100.0 * count / total:.0f}%) elapsed {format_duration(elapsed)}"]
        if 0 < count < total:
            # Constant-rate estimate; good enough for steady loops like these.
            parts.append(f"eta {format_duration(elapsed * (total - count) / count)}")
    else:
        amount = format_amount(count, unit) if unit == "B" else f"{format_amount(count, unit)} {unit}"
        parts = [f"{desc}: {amount} elapsed {format_duration(elapsed)}"]
    for key, value in (postfix or {}).items():
        parts.append(f"{key}={format_postfix_value(value)}")
    return " ".join(parts)


class Progress:
    """A progress reporter in one of three styles: "bar" (tqdm), "lines" (plain) or "off".

    Plain lines are printed when the count crosses the next `line_fraction` of the
    total, or when `line_interval_seconds` passed since the previous line, and once
    more on close if the last line did not already show the final count.
    """

    def __init__(self, total: float | None, desc: str, unit: str = "it", *, style: str = "lines",
                 stream: TextIO | None = None, line_fraction: float = 0.1,
                 line_interval_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 **tqdm_kwargs: Any):
        if style not in ("bar", "lines", "off"):
            raise ValueError(f"progress style must be bar, lines or off, got {style!r}")
        self._total = total
        self.desc = desc
        self.unit = unit
        self.style = style
        self.count: float = 0
        self.postfix: dict[str, Any] = {}
        self._stream = stream if stream is not None else sys.stderr
        self._line_fraction = line_fraction
        self._line_interval = line_interval_seconds
        self._clock = clock
        self._start = clock()
        self._last_line_time = self._start
        self._last_line_count: float | None = None
        self._next_mark = 1  # the next line is due at _next_mark * line_fraction of the total
        self._closed = False
        self._bar = None
        if style == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self._stream, dynamic_ncols=True,
                             unit_scale=(unit == "B"), unit_divisor=1000, **tqdm_kwargs)

    @property
    def total(self) -> float | None:
        return self._total

    @total.setter
    def total(self, value: float | None) -> None:
        """Callers that learn the total late (evaluation windows) set it here, as with tqdm."""
        self._total = value
        if self._bar is not None:
            self._bar.total = value
            self._bar.refresh()

    @property
    def n(self) -> float:
        """The count so far, under tqdm's name."""
        return self.count

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    def update(self, amount: float = 1) -> None:
        self.count += amount
        if self._bar is not None:
            self._bar.update(amount)
        elif self.style == "lines" and self._line_due():
            self._print_line()

    def set_postfix(self, values: Mapping[str, Any]) -> None:
        """Extra fields shown after the counts, e.g. {"loss": 3.21, "tokens/s": 51234}."""
        self.postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix({key: format_postfix_value(value) for key, value in values.items()},
                                  refresh=False)

    def write(self, message: str) -> None:
        """Print a full line without breaking the bar (quiet mode prints nothing)."""
        if self._bar is not None:
            self._bar.write(message, file=self._stream)
        elif self.style == "lines":
            print(message, file=self._stream, flush=True)

    def advance_to(self, count: float, total: float | None = None) -> None:
        """Absolute progress, for callbacks that report (done, total) as evaluation does."""
        if total is not None and total != self._total:
            self.total = total
        self.update(count - self.count)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.style == "lines" and self._last_line_count != self.count:
            self._print_line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _line_due(self) -> bool:
        now = self._clock()
        if now - self._last_line_time >= self._line_interval:
            return True
        if self.total and self.count / self.total >= self._next_mark * self._line_fraction - _TOLERANCE:
            return True
        return False

    def _print_line(self) -> None:
        now = self._clock()
        print(progress_line(self.desc, self.count, self.total, now - self._start, self.unit, self.postfix),
              file=self._stream, flush=True)
        self._last_line_time = now
        self._last_line_count = self.count
        if self.total:
            # Skip every threshold already passed, so a big jump prints one line, not several.
            done = self.count / self.total
            while self._next_mark * self._line_fraction <= done + _TOLERANCE:
                self._next_mark += 1


def progress_bar(total: float | None, desc: str, unit: str = "it", enabled: bool | None = None,
                 **kwargs: Any) -> Progress:
    """A reporter for `total` units: a tqdm bar on a terminal, plain lines elsewhere.

    `enabled=False` (e.g. on ranks other than 0) or the global quiet switch gives a
    silent reporter; `enabled=True` reports even when quiet. `style=` in kwargs
    forces "bar", "lines" or "off"; other kwargs go to `Progress` (and on to tqdm).
    """
    stream = kwargs.pop("stream", None)
    stream = stream if stream is not None else sys.stderr
    style = kwargs.pop("style", None)
    if enabled is False or (enabled is None and _quiet):
        style = "off"
    elif style is None:
        style = "bar" if _is_terminal(stream) else "lines"
    return Progress(total, desc, unit, style=style, stream=stream, **kwargs)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False
