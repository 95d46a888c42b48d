"""The per-key in-flight table the workers share (gateway/workers/in_flight.py), with
real processes: counts are seen across them, and a worker that dies (SIGKILL: no
clean-up of its own) stops counting once the next worker starts."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from gateway.auth.keys import Principal
from gateway.workers.in_flight import SharedInFlight

ONE = Principal("one", max_concurrent=1)
TWO = Principal("two", max_concurrent=2)

# A worker that takes one place of each key, says so, and waits to be killed.
HOLDER = """
import sys
from pathlib import Path
from gateway.auth.keys import Principal
from gateway.workers.in_flight import SharedInFlight
table = SharedInFlight(Path(sys.argv[1]))
assert table.enter(Principal("one", max_concurrent=1))
assert table.enter(Principal("two", max_concurrent=2))
print(table.column, flush=True)
sys.stdin.read()
"""


def test_places_are_counted_across_processes_and_freed_when_one_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        held_column = int(holder.stdout.readline())
        table = SharedInFlight(tmp_path)
        assert table.column != held_column
        assert not table.enter(ONE)  # the other process holds its only place
        assert table.enter(TWO)
        assert not table.enter(TWO)
        assert table.in_flight("two") == 2
        table.leave(TWO)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert table.in_flight("one") == 1  # nobody has counted it off yet
        replacement = SharedInFlight(tmp_path)  # a worker starting zeroes the dead one's
        assert replacement.column == held_column  # the dead worker's column, free again
        assert table.in_flight("one") == 0
        assert table.enter(ONE)
        assert not replacement.enter(ONE)
        table.leave(ONE)
        assert replacement.enter(ONE)
        replacement.close()
        table.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
