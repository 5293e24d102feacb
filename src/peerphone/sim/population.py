"""The simulated users: who they are, which node each runs, who is online and whom each watches.

The population is the ground truth the overlay is judged by; the workloads (lookups, status
changes, calls) draw their users from it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from peerphone.records import Status
from peerphone.sim.engine import SimNode


def address_of(user_index: int) -> str:
    """A distinct address per user, scattered over /24s as real hosts are (consecutive users
    in one /24 would make the first supernodes one address range: see overlay.independence)."""
    a = (user_index * 2654435761) % (1 << 24)  # odd multiplier: a bijection on 24 bits
    return f"44.{a >> 16}.{a >> 8 & 255}.{a & 255}:4433"  # a global range (overlay.independence)


class IndexedSet:
    """A set of ints with O(1) add, remove and uniform random choice."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.pos: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, x: int) -> bool:
        return x in self.pos

    def add(self, x: int) -> None:
        if x not in self.pos:
            self.pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: int) -> None:
        i = self.pos.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if last != x:
            self.items[i] = last
            self.pos[last] = i

    def choice(self, rng: random.Random) -> int:
        return self.items[int(rng.random() * len(self.items))]


@dataclass(slots=True)
class User:
    """Simulation-side facts about one user (the ground truth the overlay is judged by)."""

    index: int
    name: str
    eligible: bool
    node: SimNode
    online: bool = False
    session: int = 0
    published_seq: int | None = None  # first presence the session stored: findable since
    login_at: float = 0.0
    status: Status = Status.ONLINE  # the status the user last set (ground truth)


class Population:
    """Every simulated user, indexed by node and name; who is logged in, who is findable."""

    def __init__(self, genuine_users: int, buddies: int) -> None:
        self.genuine_users = genuine_users  # user0 .. user{n-1}; hostile nodes come after
        self.buddies = buddies  # names each user watches
        self.users: list[User] = []
        self.by_node: dict[int, User] = {}
        self.by_name: dict[str, int] = {}
        self.logged_in = IndexedSet()  # every user whose session has begun: lookup targets
        self.online = IndexedSet()  # logged in and published (findable): issuers, call parties
        self._watchers: list[list[int]] | None = None

    def add(self, user: User) -> None:
        self.users.append(user)
        self.by_node[user.node.index] = user
        self.by_name[user.name] = user.index
        self._watchers = None

    def watchers_of(self, index: int) -> list[int]:
        """The users whose buddy list holds user `index` (in index order)."""
        if self._watchers is None:
            watchers: list[list[int]] = [[] for _ in self.users]
            for user in self.users:
                for name in dict.fromkeys(self.buddies_of(user)):  # each buddy once
                    buddy = self.by_name.get(name)
                    if buddy is not None and buddy != user.index:
                        watchers[buddy].append(user.index)
            self._watchers = watchers
        return self._watchers[index]

    def buddies_of(self, user: User) -> list[str]:
        n = self.genuine_users
        return [
            f"user{(user.index * 2654435761 + (j + 1) * 40503) % n}" for j in range(self.buddies)
        ]
