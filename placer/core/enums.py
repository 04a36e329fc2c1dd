"""``NameEnum``: the base of the project's enums of names (traffic modes, solve statuses, quantities)."""

from __future__ import annotations

from enum import Enum


class NameEnum(str, Enum):
    """A ``str`` enum whose members are their names everywhere: they compare equal to them
    (``TrafficMode.EP == "ep"``), print and format as them, hash as them (so a dict keyed by names finds a member),
    and go into JSON as them."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    __hash__ = str.__hash__
