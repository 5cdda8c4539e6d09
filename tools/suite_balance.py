"""How busy each pytest-xdist worker was: a pytest plugin that prints, at the end of the run, each
worker's test time (setup + call + teardown, summed), the last time it finished a test (seconds
from the first test's start), and its three longest files, so a suite whose workers end far
apart (one idle while the other runs a long file) shows it.

    python -m pytest -q -p tools.suite_balance

Last line: ``suite_balance workers=<n> busiest_s=<s> idlest_s=<s> end_gap_s=<s>``.
"""

import time
from collections import Counter, defaultdict

_busy = defaultdict(float)  # worker -> seconds of tests
_files = defaultdict(Counter)  # worker -> file -> seconds
_end = {}  # worker -> wall time of its last finished test
_start = []


def pytest_runtest_logreport(report):
    worker = getattr(getattr(report, "node", None), "gateway", None)
    worker = worker.id if worker is not None else "main"
    now = time.time()
    if not _start:
        _start.append(now - report.duration)
    _busy[worker] += report.duration
    _files[worker][report.nodeid.split("::")[0]] += report.duration
    _end[worker] = now


def pytest_terminal_summary(terminalreporter):
    if not _busy:
        return
    write = terminalreporter.write_line
    write("suite balance (seconds of tests per worker; end: last test finished, from the first start):")
    for worker in sorted(_busy):
        top = ", ".join(f"{name} {seconds:.0f}" for name, seconds in _files[worker].most_common(3))
        write(f"  {worker}: {_busy[worker]:.0f} s, end {_end[worker] - _start[0]:.0f} s; longest: {top}")
    ends = [_end[w] - _start[0] for w in _busy]
    write(f"suite_balance workers={len(_busy)} busiest_s={max(_busy.values()):.0f} "
          f"idlest_s={min(_busy.values()):.0f} end_gap_s={max(ends) - min(ends):.0f}")
