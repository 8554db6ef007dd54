"""What a run did, counted as it goes: the summary and the one progress bar.

    Summary    the counts a run ends with, its summary lines and its exit code
    Progress   the bar (or one log line per job when not on a terminal), the counts
               behind it, what each job in flight is doing now (on the bar only), and
               the one place worker threads print from

A job counts once: made by this process, or made by another worker (found done by a
scan, or kept when ours turned out a duplicate); what was done when the run started
is neither.
"""

import math
import posixpath
import sys
import threading
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from drawpipe.errors import Interrupted, JobFailed
from drawpipe.layout import CONTROL_FOLDER, DRAIN_FOLDER


@dataclass
class Summary:
    stage: str
    total: int = 0  # jobs in the plan
    already_done: int = 0  # outputs present when the run started
    made: int = 0  # outputs this process wrote
    by_others: int = 0  # outputs other workers wrote during this run
    failed: dict = field(default_factory=dict)  # job key -> last error
    # job key -> why: a stale claim that someone keeps open (SMB) could not be taken
    # over for longer than EngineSettings.blocked_after_seconds
    blocked: dict = field(default_factory=dict)
    interrupted: bool = False  # a stop signal came during the run
    watch: bool = False  # a --watch run: only a stop signal ends it
    remaining: int = 0  # jobs without output at the end
    resent: int = 0  # requests sent again after a transient failure (the stage's client)
    retried: int = 0  # jobs tried again after they had failed in this run (--watch)
    # The night at a glance (engine/supervision.py): the drain file this run obeyed (it
    # then leaves what is left to the others and exits 0), the workers that stopped for
    # good, and the servers still quarantined when the run ended: {server: why}.
    drained: str | None = None
    retired: dict = field(default_factory=dict)
    quarantined: dict = field(default_factory=dict)

    @property
    def stopped_early(self) -> bool:
        """Interrupted with something left undone (a --watch run never runs out of work):
        a signal that came as the last image landed changes nothing."""
        return self.interrupted and bool(self.remaining or self.watch)

    def counts(self) -> dict:
        """The run's counts as its status file and its messages give them."""
        return {"total": self.total, "made": self.made, "already_done": self.already_done,
                "by_others": self.by_others, "failed": len(self.failed)}

    @property
    def exit_code(self) -> int:
        if self.stopped_early:
            return Interrupted.exit_code
        left_undone = self.remaining and not self.drained  # drained: left to the others
        return JobFailed.exit_code if self.failed or left_undone else 0

    def lines(self) -> list[str]:
        lines = [
            f"{self.stage}: {self.made} made, {self.already_done} already done, "
            f"{self.by_others} made by other workers, {len(self.failed)} failed, "
            f"{self.remaining} left of {self.total}"
        ]
        if self.resent or self.retried:
            lines.append(f"retries: {self.resent} request(s) re-sent, {self.retried} failed "
                         "job(s) tried again")
        if self.failed:
            lines.append(f"{len(self.failed)} failed; run the same command again to retry them")
        for key, reason in self.blocked.items():
            lines.append(f"blocked: {key}: {reason}")
        if self.blocked:
            lines.append(f"{len(self.blocked)} blocked by a stale claim someone keeps open; run "
                         "the same command again once it is free")
        for server, reason in self.retired.items():
            lines.append(f"stopped using {server}: {reason}")
        for server, reason in self.quarantined.items():
            lines.append(f"quarantined at the end: {server} ({reason}); its jobs were left to "
                         "the other workers")
        if self.drained:
            lines.append(f"drained by {CONTROL_FOLDER}/{DRAIN_FOLDER}/{self.drained}: "
                         f"{self.remaining} left to "
                         "the other Macs; remove it before this Mac's next run (python -m "
                         f"drawpipe.status --undrain {self.drained})")
        if self.stopped_early:
            lines.append("interrupted; run the same command again to continue")
        return lines


class Progress:
    """The one progress bar (or log lines when not on a terminal) and the counts."""

    def __init__(self, summary: Summary, already_done: set[str], enabled: bool | None):
        self.summary = summary
        self.lock = threading.Lock()
        self.done_keys = set(already_done)  # present at the start: not "made by others"
        # initial=: what was done before must not inflate the rate and the ETA.
        self.bar = tqdm(total=summary.total, initial=len(already_done), unit="img",
                        desc=summary.stage,
                        disable=not enabled if enabled is not None else not sys.stderr.isatty(),
                        dynamic_ncols=True, smoothing=0.1)
        self.log_successes = self.bar.disable
        self._said: dict[tuple[str, str], float] = {}  # (job key, kind) -> when last said
        self._doing: dict[str, str] = {}  # job key -> what it is doing now (activity)

    def log(self, line: str) -> None:
        try:
            tqdm.write(line, file=sys.stderr)
        except OSError:
            pass  # the terminal is gone (SIGHUP): nobody to tell

    def log_once(self, key: str, kind: str, line: str, every_seconds: float = math.inf) -> None:
        """``line``, the first time job ``key`` gives news of this ``kind`` in this run (and
        again after ``every_seconds``, for news that goes on)."""
        now = time.monotonic()
        with self.lock:
            said = self._said.get((key, kind))
            if said is not None and now - said < every_seconds:
                return
            self._said[(key, kind)] = now
        self.log(line)

    def seen_done(self, keys: set[str], total: int) -> None:
        """A scan found these outputs present: count the new ones as made by others."""
        with self.lock:
            new = keys - self.done_keys
            self.summary.by_others += len(new)
            self.done_keys |= new
            self.summary.total = total
            self.bar.total = total
            self._refresh()

    def made(self, key: str, line: str) -> None:
        with self.lock:
            if key not in self.done_keys:
                self.done_keys.add(key)
                self.summary.made += 1
            self.summary.failed.pop(key, None)
            self._refresh()
        if self.log_successes:
            self.log(line)

    def duplicate(self, key: str, output_present: bool, line: str) -> None:
        """Another worker finished (or holds) the job we also did: theirs is kept."""
        with self.lock:
            if output_present and key not in self.done_keys:
                self.done_keys.add(key)
                self.summary.by_others += 1
            self.summary.failed.pop(key, None)
            self._refresh()
        self.log(line)

    def blocked(self, key: str, reason: str) -> None:
        """Job ``key`` cannot be taken over (a stale claim held open), for too long."""
        with self.lock:
            new = key not in self.summary.blocked
            self.summary.blocked[key] = reason
        if new:
            self.log(f"blocked: {key}: {reason}")

    def unblocked(self, key: str) -> None:
        with self.lock:
            self.summary.blocked.pop(key, None)

    def failed(self, key: str, error: str) -> None:
        with self.lock:
            self.summary.failed[key] = error
            self._refresh()
        self.log(f"failed: {key}: {error}")

    def activity(self, key: str, text: str | None) -> None:
        """What job ``key`` is doing now ("sampling 12/30"), shown after the counts on the
        bar; None: nothing any more. Without a bar, nothing is said (a line per step
        would bury the log)."""
        with self.lock:
            if text is None:
                if self._doing.pop(key, None) is None:
                    return
            elif self._doing.get(key) == text:
                return
            else:
                self._doing[key] = text
            if not self.bar.disable:
                self._refresh()

    def count(self, resent: int = 0, retried: int = 0) -> None:
        with self.lock:
            self.summary.resent += resent
            self.summary.retried += retried

    def _refresh(self):
        self.bar.n = len(self.done_keys)
        doing = "".join(f" | {posixpath.basename(key)}: {text}"
                        for key, text in self._doing.items())
        self.bar.set_postfix_str(
            f"new={self.summary.made} others={self.summary.by_others} "
            f"failed={len(self.summary.failed)}{doing}", refresh=False)
        try:
            self.bar.refresh()
        except OSError:
            pass

    def close(self):
        try:
            self.bar.close()
        except OSError:
            pass
