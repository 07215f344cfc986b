"""harness/dispatchlog.py: what the fault tests read from the origin's request log."""

from __future__ import annotations

from harness.dispatchlog import Download, asked_again, longest_pause, silences, turns

HANDOVER = [
    Download(10.0, "/a", "first"),
    Download(10.5, "/b", "first"),
    Download(13.0, "/b", "second"),  # b again: in flight at the switch
    Download(13.1, "/c", "second"),
]
AT_ONCE = [
    Download(1.0, "/a", "first"),
    Download(1.01, "/b", "second"),
    Download(1.02, "/c", "first"),
]


def test_a_handover_is_two_turns_with_a_silence_between() -> None:
    assert turns(HANDOVER) == ["first", "second"]
    assert silences(HANDOVER) == [2.5]
    assert asked_again(HANDOVER) == 1
    assert longest_pause(HANDOVER) == 2.5


def test_two_dispatchers_at_once_change_turns_without_silence() -> None:
    assert turns(AT_ONCE) == ["first", "second", "first"]
    assert silences(AT_ONCE) == [0.01, 0.01]


def test_no_download_is_no_turn_and_no_pause() -> None:
    assert (turns([]), silences([]), asked_again([]), longest_pause([])) == ([], [], 0, 0.0)
