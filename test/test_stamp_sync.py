"""StampSync: exact-stamp matching, no late delivery, and recovery when time jumps back."""

from __future__ import annotations

from types import SimpleNamespace

from uois_sam_ros.nodes.inputs import StampSync


def msg(sec: int, nsec: int = 0, tag: str = ""):
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nsec)), tag=tag)


def test_matches_only_equal_stamps_and_never_delivers_older():
    s = StampSync(["color", "depth"], depth=4)
    assert s.add("color", msg(10, 5, "c10")) is None
    assert s.add("depth", msg(10, 6, "d10b")) is None  # 1 ns apart: not the same frame
    out = s.add("depth", msg(10, 5, "d10"))
    assert out is not None and out["color"].tag == "c10" and out["depth"].tag == "d10"
    # an older frame completing after a newer one was delivered is dropped, not delivered late
    assert s.add("color", msg(10, 1)) is None
    assert s.add("depth", msg(10, 1)) is None


def test_buffer_keeps_at_most_depth_per_topic():
    s = StampSync(["a", "b"], depth=2)
    for t in (1, 2, 3):
        s.add("a", msg(t))
    assert list(s.buffers["a"]) == [(2, 0), (3, 0)]
    assert s.add("b", msg(1)) is None  # frame 1 was evicted from 'a'
    assert s.add("b", msg(3)) is not None


def test_backwards_time_jump_restarts_instead_of_starving():
    s = StampSync(["a", "b"])
    s.add("a", msg(100))
    assert s.add("b", msg(100)) is not None
    # a replayed bag starts again 90 s earlier: frames must flow again
    s.add("a", msg(10))
    out = s.add("b", msg(10))
    assert out is not None and s.last == (10, 0)
    # small reordering (< JUMP_BACK_NS) is still treated as stale
    s.add("a", msg(9, 500_000_000))
    assert s.add("b", msg(9, 500_000_000)) is None


def test_exact_matching_shortcut_delivers_what_the_general_search_delivers():
    """slop 0 only looks at the arriving stamp (a set is delivered the moment it is complete): on any
    arrival order, with losses and evictions, the same sets come out as from the general search."""
    import random

    class General(StampSync):
        def _match_exact(self, key):
            return self._match()

    rng = random.Random(7)
    for trial in range(200):
        topics = ["color", "depth", "prompts"][: rng.choice([2, 3])]
        fast = StampSync(topics, depth=rng.choice([1, 3, 10]))
        slow = General(topics, depth=fast.depth)
        events = [(t, s) for s in range(1, 30) for t in topics if rng.random() > 0.15]
        # topics are not ordered against each other: shuffle within a window
        for i in range(len(events)):
            j = min(len(events) - 1, i + rng.randint(0, 6))
            events[i], events[j] = events[j], events[i]
        for topic, sec in events:
            a = fast.add(topic, msg(sec, 0, f"{topic}{sec}"))
            b = slow.add(topic, msg(sec, 0, f"{topic}{sec}"))
            assert (a is None) == (b is None), (trial, topic, sec)
            if a is not None:
                assert {t: m.tag for t, m in a.items()} == {t: m.tag for t, m in b.items()}
        assert fast.delivered == slow.delivered and fast.last == slow.last
