"""Progress of a long pass over the data (`nami data encode`, `nami data check`), on stderr so that stdout stays
one JSON object under `--json`.

On a terminal it is a tqdm bar. Elsewhere (SLURM, nohup, a pipe) a bar would be disabled and a multi-hour
encode would print nothing until its report, so a plain line is printed every `interval` seconds instead:
samples so far, samples/s over the pass, samples skipped.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm.auto import tqdm

PLAIN_INTERVAL_S = 30.0


class Progress:
    """`update(n, skipped)` after each batch; use as a context manager (closes the bar)."""

    def __init__(self, desc: str, stream: TextIO | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.desc, self.stream, self.clock = desc, stream or sys.stderr, clock
        self.interval = PLAIN_INTERVAL_S if interval is None else interval
        self.samples, self.skipped = 0, 0
        self.start = self.last = clock()
        self.bar = tqdm(desc=desc, unit="sample", file=self.stream) if self.stream.isatty() else None

    def update(self, samples: int, skipped: int | None = None) -> None:
        """`samples` more done; `skipped`: the total skipped so far (None: unchanged)."""
        self.samples += samples
        if skipped is not None:
            self.skipped = skipped
        if self.bar is not None:
            if skipped is not None:
                self.bar.set_postfix(skipped=self.skipped, refresh=False)
            self.bar.update(samples)
            return
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float) -> str:
        """The plain progress line at clock time `now`."""
        elapsed = max(now - self.start, 1e-9)
        minutes, seconds = divmod(int(elapsed), 60)
        rate = self.samples / elapsed
        return (f"{self.desc}: {self.samples} samples, {rate:.1f} samples/s, {self.skipped} skipped "
                f"({minutes // 60}:{minutes % 60:02d}:{seconds:02d} elapsed)")  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
