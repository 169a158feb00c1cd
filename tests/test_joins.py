"""The join store: labels before and after predictions, duplicates, TTL and cap, all counted."""

from __future__ import annotations

from exporter.joins import DUPLICATE, JOINED, WAITING, JoinStore, Pending


def pending(at: float, pred: int = 1) -> Pending:
    return Pending(arrival=at, version="v1", timestamp=at, prediction=pred, scores=(0.7,))


def test_label_after_prediction_is_joined():
    s = JoinStore(ttl_seconds=100, cap=10)
    assert s.add_prediction("a", pending(0)) == (WAITING, None)
    assert s.waiting_predictions == 1
    status, p = s.add_label("a", 0, arrival=5)
    assert status == JOINED and p.prediction == 1 and p.scores == (0.7,)
    assert s.waiting_predictions == 0


def test_label_before_prediction_is_joined():
    s = JoinStore(ttl_seconds=100, cap=10)
    assert s.add_label("a", "churn", arrival=0) == (WAITING, None)
    assert s.waiting_labels == 1
    assert s.add_prediction("a", pending(3)) == (JOINED, "churn")
    assert s.waiting_labels == 0 and s.waiting_predictions == 0


def test_duplicates_are_recognised_after_the_join():
    s = JoinStore(ttl_seconds=100, cap=10)
    s.add_prediction("a", pending(0))
    assert s.add_prediction("a", pending(1))[0] == DUPLICATE
    s.add_label("a", 0, arrival=2)
    assert s.add_label("a", 1, arrival=3)[0] == DUPLICATE
    assert s.add_prediction("a", pending(4))[0] == DUPLICATE
    s.add_label("b", 0, arrival=5)
    assert s.add_label("b", 1, arrival=6)[0] == DUPLICATE


def test_entries_expire_after_the_ttl_and_are_counted():
    s = JoinStore(ttl_seconds=100, cap=10)
    s.add_prediction("a", pending(0))
    s.add_label("x", 0, arrival=50)
    s.add_prediction("b", pending(60))
    s.expire(now=120)
    assert s.waiting_predictions == 1 and s.waiting_labels == 1
    assert s.dropped["prediction", "expired"] == 1
    s.expire(now=161)
    assert s.waiting_predictions == 0 and s.waiting_labels == 0
    assert s.dropped == {
        ("prediction", "expired"): 2,
        ("prediction", "evicted"): 0,
        ("label", "expired"): 1,
        ("label", "evicted"): 0,
    }
    assert s.add_label("a", 0, arrival=170)[0] == WAITING  # an expired prediction can no longer be joined


def test_cap_evicts_the_oldest_and_counts_it():
    s = JoinStore(ttl_seconds=1000, cap=3)
    for i in range(5):
        s.add_prediction(str(i), pending(i))
    assert s.waiting_predictions == 3
    assert s.dropped["prediction", "evicted"] == 2
    assert s.add_label("0", 1, arrival=9)[0] == WAITING  # "0" was evicted
    assert s.add_label("4", 1, arrival=9)[0] == JOINED
    for i in range(5):
        s.add_label(f"l{i}", 0, arrival=10 + i)
    assert s.waiting_labels == 3
    assert s.dropped["label", "evicted"] == 3


def test_tombstones_do_not_count_as_waiting_or_as_evictions():
    s = JoinStore(ttl_seconds=1000, cap=2)
    s.add_prediction("a", pending(0))
    s.add_label("a", 0, arrival=1)  # a becomes a tombstone
    s.add_prediction("b", pending(2))
    s.add_prediction("c", pending(3))  # pushes out a's tombstone: not an eviction
    assert s.dropped["prediction", "evicted"] == 0
    assert s.waiting_predictions == 2
