"""The bodies of the public listings (archive, feed, calendar), kept by their validator tag.

A tag is computed from one aggregate query over what a listing shows, so a cached body is
served only while that data is unchanged; anything new makes a new tag and a new body.
Building the calendar costs ~1 ms an event in icalendar, so without this every calendar
client polling the server would rebuild the same file.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable


class PageCache:
    """At most `size` bodies, least recently used dropped first; safe across waitress threads."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tag: str, make: Callable[[], bytes]) -> bytes:
        """The body for `tag`, made by `make()` if it is not kept (two threads may both make it)."""
        with self._lock:
            if tag in self._bodies:
                self._bodies.move_to_end(tag)
                return self._bodies[tag]
        body = make()
        with self._lock:
            self._bodies[tag] = body
            while len(self._bodies) > self.size:
                self._bodies.popitem(last=False)
        return body
