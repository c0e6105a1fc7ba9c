"""Incremental stop-string matching for streamed text.

Text is released as soon as it can no longer be part of a stop string; the rest is held back:

    stop = "###"      deltas "Hi #", "#", " there"  ->  release "Hi ", hold "#" / "##", then release "## there"
                      deltas "Hi #", "##"           ->  release "Hi ", then stop (nothing more)

Because released text never ends with the beginning of a stop string, a stop string can only occur
inside the held-back tail plus the new delta: each step scans that short buffer, never the whole
output (no re-decoding of everything generated so far).
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str] | tuple[str, ...] = ()) -> None:
        if any(not isinstance(s, str) or not s for s in stops):
            raise ValueError(f"stop strings must be non-empty strings, got {list(stops)!r}")
        self.stops = list(stops)
        self.held = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add new text; return what can be released now. After a stop string is found,
        `stopped` is True and the text before it has been released."""
        if self.stopped:
            return ""
        buf = self.held + delta
        if not self.stops:
            self.held = ""
            return buf
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return buf[: min(hits)]
        keep = partial_stop(buf, self.stops)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """At the end of a generation that did not stop: the held-back text is output after all."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out


def partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)
