"""Ground truth kept beside the overlay: what it was asked to do, judged against what happened.

Nothing here sends a message, draws a random number or schedules an event, so keeping these
books never changes the run they describe.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from peerphone.overlay.events import LookupDone
from peerphone.records import Status
from peerphone.sim.metrics import Metrics
from peerphone.sim.population import Population, User

PRESENCE_DEADLINE_S = 30.0  # a status change a watcher has not seen this long after is missing

# why a started lookup was never judged (it counts in `issued`, not in `attempted`)
ASKER_CRASHED = "asker crashed"
ASKER_LOGGED_OUT = "asker logged out"
TARGET_LEFT = "target left"


@dataclass(frozen=True, slots=True)
class _Asked:
    """One lookup on its way: whom it was for, and which of the target's records will do."""

    target: int
    session: int  # the target's session when the lookup started
    min_seq: int  # a presence record at least this new is an answer
    findable: bool  # the target had published when the lookup started


class LookupLedger:
    """Every lookup the workload starts, until it is judged, or lost with a reason."""

    def __init__(self, population: Population, metrics: Metrics) -> None:
        self.population = population
        self.metrics = metrics
        self._pending: dict[int, dict[int, _Asked]] = {}  # asker index -> request id -> ...
        self.attacked: set[int] = set()  # users whose names a hostile supernode forges

    def started(self, asker: User, req: int, target: User) -> None:
        if target.published_seq is not None:
            asked = _Asked(target.index, target.session, target.published_seq, True)
        else:
            # not findable yet: any record of this session answers (sequence numbers follow
            # the clock in ms, so this session's first record is at least its login time)
            asked = _Asked(target.index, target.session, int(target.login_at * 1000), False)
        self._pending.setdefault(asker.index, {})[req] = asked
        self.metrics.lookups_issued += 1

    def done(self, asker: User, event: LookupDone) -> None:
        """Judge a finished lookup of `asker`'s current session."""
        asked = self._pending.get(asker.index, {}).pop(event.req, None)
        if asked is None:
            return  # a lookup of the node's own (a watched user's key to pin)
        m = self.metrics
        if event.reason == "logged out":
            m.lose_lookup(ASKER_LOGGED_OUT)
            return
        target = self.population.users[asked.target]
        if not target.online or target.session != asked.session:
            m.lose_lookup(TARGET_LEFT)  # not a lookup of an online user any more
            return
        ok = (
            event.presence is not None
            and event.status is not Status.OFFLINE
            and event.presence.seq >= asked.min_seq
        )
        reason = event.reason or ("stale record" if event.presence is not None else "not found")
        m.record_lookup(
            event.started, ok, event.finished - event.started, event.hops, "" if ok else reason
        )
        if not asked.findable:
            m.unfindable_lookups += 1
            m.unfindable_lookups_ok += int(ok)
        if asked.target in self.attacked:
            m.attacked_lookups += 1
            if not ok:
                m.attacked_failures[reason] = m.attacked_failures.get(reason, 0) + 1

    def asker_gone(self, asker: User, crashed: bool) -> None:
        """The asker's process ended: whatever it still waited for is lost, and counted."""
        pending = self._pending.pop(asker.index, {})
        for _ in pending:
            self.metrics.lose_lookup(ASKER_CRASHED if crashed else ASKER_LOGGED_OUT)

    def unfinished(self) -> int:
        return sum(len(p) for p in self._pending.values())


@dataclass(frozen=True, slots=True)
class _Expected:
    """A watcher that should hear of a user's status change."""

    changed_at: float
    watcher: int
    watcher_session: int
    user: int
    user_session: int


class PresenceLedger:
    """Status changes each online watcher should hear of, and whether it did in time."""

    def __init__(self, population: Population, metrics: Metrics) -> None:
        self.population = population
        self.metrics = metrics
        self._expected: deque[_Expected] = deque()  # in order of change time
        self._heard: dict[tuple[int, int], float] = {}  # (watcher, user) -> newest record's time

    def changed(self, user: User, now: float) -> None:
        """`user` (online and published) changed status at `now`: its watchers should hear."""
        users = self.population.users
        online = self.population.online
        for index in self.population.watchers_of(user.index):
            if index in online:  # published, so its watch list is with a supernode
                watcher = users[index]
                self._expected.append(
                    _Expected(now, index, watcher.session, user.index, user.session)
                )
                self.metrics.presence_expected += 1

    def heard(self, watcher: User, username: str, created: float) -> None:
        """`watcher` saw a presence record of `username` made at `created`."""
        index = self.population.by_name.get(username)
        if index is not None:
            key = (watcher.index, index)
            self._heard[key] = max(self._heard.get(key, created), created)

    def judge(self, now: float) -> None:
        """Settle every expectation whose deadline has passed."""
        users = self.population.users
        m = self.metrics
        expected = self._expected
        while expected and expected[0].changed_at + PRESENCE_DEADLINE_S <= now:
            e = expected.popleft()
            watcher, user = users[e.watcher], users[e.user]
            if not (watcher.online and watcher.session == e.watcher_session) or not (
                user.online and user.session == e.user_session
            ):
                m.presence_unjudged += 1  # one of them left: nobody could be told
            # records carry their expiry in whole ms: the creation time read back from one
            # is up to 1 ms early
            elif self._heard.get((e.watcher, e.user), -1.0) >= e.changed_at - 0.001:
                m.presence_delivered += 1
            else:
                m.presence_missing += 1

    def unjudged(self) -> int:
        return len(self._expected)
