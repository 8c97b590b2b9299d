"""Ray's current-cluster file after `raypipe down`: cleared when it names the head raypipe
stopped, as ``ray stop`` clears it, and left alone when it names another cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from raypipe.runtime import head

OURS = "10.0.0.5:6380"
OTHER = "10.0.0.5:6379"


@pytest.fixture
def pointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ray" / "ray_current_cluster"
    path.parent.mkdir()
    monkeypatch.setattr(head, "pointer_file", lambda: path)
    return path


@pytest.fixture
def answering(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The ports that answer (none, unless a test adds some)."""
    ports: set[int] = set()
    monkeypatch.setattr(head, "_port_open", lambda host, port, timeout=1.0: port in ports)
    return ports


def test_the_record_keeps_what_ray_start_wrote_and_what_was_there_before() -> None:
    assert head.started_record(6380, OTHER, OURS) == {
        "port": 6380,
        "address": OURS,
        "previous": OTHER,
    }
    assert head.started_record(6380, None, OURS) == {"port": 6380, "address": OURS}
    assert head.started_record(6380, OURS, OURS) == {"port": 6380, "address": OURS}
    # Another `ray start` wrote the file meanwhile: it is not this head's.
    assert head.started_record(6380, None, OTHER) == {"port": 6380}


def test_a_file_naming_the_stopped_head_is_removed(pointer: Path, answering: set[int]) -> None:
    pointer.write_text(OURS)
    head.release_pointer(head.started_record(6380, None, OURS), 6380)
    assert not pointer.exists()


def test_a_file_naming_another_cluster_is_left_alone(pointer: Path, answering: set[int]) -> None:
    pointer.write_text(OTHER)  # a `ray start` after `raypipe up`
    head.release_pointer(head.started_record(6380, None, OURS), 6380)
    assert pointer.read_text() == OTHER


def test_the_cluster_named_before_is_named_again_while_it_answers(
    pointer: Path, answering: set[int]
) -> None:
    record = head.started_record(6380, OTHER, OURS)
    pointer.write_text(OURS)
    answering.add(6379)
    head.release_pointer(record, 6380)
    assert pointer.read_text() == OTHER

    pointer.write_text(OURS)
    answering.clear()  # stopped since: naming it would leave the file stale again
    head.release_pointer(record, 6380)
    assert not pointer.exists()


def test_a_marker_without_an_address_matches_the_port_once_it_is_silent(
    pointer: Path, answering: set[int]
) -> None:
    pointer.write_text(OTHER)
    head.release_pointer({"port": 6380}, 6380)
    assert pointer.read_text() == OTHER
    pointer.write_text(OURS)
    answering.add(6380)  # something answers there again: not the head that stopped
    head.release_pointer({"port": 6380}, 6380)
    assert pointer.read_text() == OURS
    answering.clear()
    head.release_pointer({"port": 6380}, 6380)
    assert not pointer.exists()


def test_no_file_no_change(pointer: Path, answering: set[int]) -> None:
    head.release_pointer(head.started_record(6380, None, OURS), 6380)
    assert not pointer.exists()
