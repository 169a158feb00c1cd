"""Joining labels to predictions: every arrival order, duplicates, TTL, caps and retired versions, all counted."""

from __future__ import annotations

import sys

import pytest

from exporter.config import parse_config
from exporter.engine.state import ModelState
from exporter.ingest.validation import Label, Prediction

T = 1_800_000_000.0


def model(limits: str = "") -> ModelState:
    config = parse_config(f"{limits}\nmodels:\n  - {{name: m, task: binary, classes: [no, yes]}}\n")
    return ModelState(config.models[0], config)


def pred(pid, at=T, label=None, version="v1", prediction=1, score=0.8) -> Prediction:
    return Prediction("m", version, pid, at, prediction, (score,), None, label)


def lab(pid, label=1) -> Label:
    return Label("m", pid, label)


def snap(state: ModelState, now: float):
    s = state.snapshot(now)
    return s, {v.version: v for v in s.versions}


def test_label_after_prediction_is_joined_with_its_delay():
    s = model()
    assert s.add_predictions([pred("a", at=T)], T) == (1, 0)
    assert s.add_labels([lab("a", 0)], T + 90) == (1, 0)
    sn, v = snap(s, T + 90)
    assert v["v1"].labels == 1 and sn.pending_predictions == 0
    assert v["v1"].outcomes[0, 1] == 1  # actual no, predicted yes
    assert v["v1"].label_delay.sum == 90


def test_label_before_prediction_waits_and_its_delay_counts_from_its_own_arrival():
    s = model()
    s.add_labels([lab("a")], T + 10)  # the truth came 10 s after the prediction was made ...
    assert snap(s, T + 10)[0].pending_labels == 1
    s.add_predictions([pred("a", at=T)], T + 20)  # ... which the model server sent 20 s after making it
    sn, v = snap(s, T + 20)
    assert sn.pending_labels == 0 and v["v1"].labels == 1
    assert v["v1"].label_delay.sum == 10
    assert v["v1"].windows["5m"]["labeled"] == 1


def test_duplicates_are_recognised_after_the_join():
    s = model()
    s.add_predictions([pred("a")], T)
    assert s.add_predictions([pred("a")], T + 1) == (0, 1)
    s.add_labels([lab("a")], T + 2)
    assert s.add_labels([lab("a", 0)], T + 3) == (0, 1)
    assert s.add_predictions([pred("a")], T + 4) == (0, 1)
    sn, v = snap(s, T + 4)
    assert v["v1"].predictions == 1 and v["v1"].labels == 1
    assert sn.duplicates == {"prediction": 2, "label": 1}


def test_a_second_early_label_does_not_replace_the_first():
    s = model()
    s.add_labels([lab("a", 1)], T)
    assert s.add_labels([lab("a", 0)], T + 1) == (0, 1)
    s.add_predictions([pred("a", prediction=1)], T + 2)
    assert snap(s, T + 2)[1]["v1"].outcomes[1, 1] == 1


def test_a_resent_prediction_with_its_label_joins_the_waiting_one():
    s = model()
    s.add_predictions([pred("a")], T)
    assert s.add_predictions([pred("a", label=1)], T + 5) == (0, 1)
    sn, v = snap(s, T + 5)
    assert v["v1"].predictions == 1 and v["v1"].labels == 1 and sn.pending_predictions == 0


def test_an_inline_label_wins_over_an_early_one_which_counts_as_duplicate():
    s = model()
    s.add_labels([lab("a", 0)], T)
    s.add_predictions([pred("a", label=1, prediction=1)], T + 1)
    sn, v = snap(s, T + 1)
    assert v["v1"].outcomes[1, 1] == 1 and v["v1"].labels == 1
    assert sn.pending_labels == 0 and sn.duplicates["label"] == 1


def test_entries_expire_after_the_ttl_and_are_counted():
    s = model("limits: {pending_ttl: 100s}")
    s.add_predictions([pred("a")], T)
    s.add_labels([lab("x")], T + 50)
    s.add_predictions([pred("b")], T + 60)
    s.expire(T + 120)
    sn = s.snapshot(T + 120)
    assert (sn.pending_predictions, sn.pending_labels) == (1, 1)
    s.expire(T + 161)
    sn = s.snapshot(T + 161)
    assert (sn.pending_predictions, sn.pending_labels) == (0, 0)
    assert sn.dropped["prediction", "expired"] == 2 and sn.dropped["label", "expired"] == 1
    s.add_labels([lab("a")], T + 170)  # an expired prediction can no longer be joined: the label waits
    assert s.snapshot(T + 170).pending_labels == 1


def test_the_cap_evicts_the_oldest_and_counts_it():
    s = model("limits: {max_pending_per_model: 3}")
    s.add_predictions([pred(str(i)) for i in range(5)], T)
    sn = s.snapshot(T)
    assert sn.pending_predictions == 3 and sn.dropped["prediction", "evicted"] == 2
    s.add_labels([lab("0"), lab("4")], T + 1)  # "0" was evicted: its label waits; "4" joins
    sn, v = snap(s, T + 1)
    assert v["v1"].labels == 1 and sn.pending_labels == 1


def test_joined_ids_do_not_push_out_waiting_predictions():
    s = model("limits: {max_pending_per_model: 3}")
    s.add_predictions([pred("w")], T)
    s.add_predictions([pred(f"j{i}", label=1) for i in range(10)], T + 1)
    sn = s.snapshot(T + 1)
    assert sn.pending_predictions == 1 and sn.dropped["prediction", "evicted"] == 0


def test_a_label_for_a_retired_version_is_dropped_and_counted():
    s = model("limits: {max_versions_per_model: 1}")
    s.add_predictions([pred("a", version="old")], T)
    s.add_predictions([pred("b", version="new")], T + 1)  # retires "old"
    s.add_labels([lab("a")], T + 2)
    sn, v = snap(s, T + 2)
    assert set(v) == {"new"} and sn.retired_versions == 1
    assert sn.dropped["prediction", "version_retired"] == 1


@pytest.mark.parametrize("order", ["label_first", "label_after", "inline"])
def test_every_arrival_order_gives_the_same_counts(order):
    s = model()
    if order == "label_first":
        s.add_labels([lab(str(i), i % 2) for i in range(10)], T)
    s.add_predictions([pred(str(i), label=(i % 2 if order == "inline" else None)) for i in range(10)], T + 1)
    if order == "label_after":
        s.add_labels([lab(str(i), i % 2) for i in range(10)], T + 2)
    sn, v = snap(s, T + 2)
    assert v["v1"].labels == 10 and v["v1"].predictions == 10
    assert v["v1"].outcomes.tolist() == [[0, 5], [0, 5]]
    assert (sn.pending_predictions, sn.pending_labels) == (0, 0)


def test_a_stores_copy_pickles_as_the_store_did_when_copied_and_loads_as_a_store():
    """A checkpoint copies the join store under the ingest lock and pickles the copy later: the copy is the
    store's state at that moment (later changes not in it), and reads back as a working store."""
    import pickle

    from exporter.engine.joins import JoinStore

    store = JoinStore(3600, 4)
    for i in range(6):
        store.put_waiting(f"p{i}", (float(i), "v1", float(i), 1, (0.2, 0.8), None))
    store.put_early("e1", "yes", 7.0)
    store.mark_joined("j1", 8.0)
    copy = store.copy()
    expected = pickle.dumps(store, protocol=pickle.HIGHEST_PROTOCOL)
    store.put_waiting("later", (9.0, "v1", 9.0, 0, None, None))
    store.take_dropped()
    assert pickle.dumps(copy, protocol=pickle.HIGHEST_PROTOCOL) == expected
    back = pickle.loads(expected)
    assert back.counts() == (4, 1) and back.dropped["prediction", "evicted"] == 2
    assert back.join_labels([("p5", "yes")], 10.0)[0][1].timestamp == 5.0


def _keeps_hashes(d: dict) -> bool:
    """Whether a dict's (or OrderedDict's) entries hold their keys' hashes: CPython's dk_kind is not
    DICT_KEYS_UNICODE (the byte at offset 10 of the keys object, CPython 3.11 to 3.13; PyODictObject begins
    with a PyDictObject)."""
    import ctypes

    keys = ctypes.c_void_p.from_address(id(d) + 32).value  # ma_keys: after ob_refcnt, ob_type, ma_used, version
    return ctypes.c_uint8.from_address(keys + 10).value != 1  # 1: DICT_KEYS_UNICODE


@pytest.mark.skipif(
    sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 13),
    reason="reads CPython 3.11-3.13's dict layout",
)
def test_every_dict_of_ids_keeps_its_keys_hashes_when_made_cleared_and_loaded():
    """A dict of str keys only keeps no hash in its entries, so each probe of a look-up also reads the key's
    string: one more cache miss per probe in dicts of 100,000 ids (joins._id_dict). Made, filled with text
    ids, cleared by a reset and loaded from every snapshot form, the store's dicts still keep them; a dict
    made the plain way does not (this test's own check)."""
    import pickle

    import numpy as np

    from exporter.engine.joins import JoinStore

    plain: dict = {}
    plain.update((f"p{i}", i) for i in range(100))
    assert not _keeps_hashes(plain)

    def parts(store):
        return {"waiting": store._waiting, "coded": store._coded, "early": store._early, "joined": store._joined}

    def filled() -> JoinStore:
        store = JoinStore(3600, 1000)
        for i in range(50):
            store.put_waiting(f"p{i}", (float(i), "v1", float(i), 1, None, None))
            store.put_early(f"e{i}", "yes", float(i))
            store.mark_joined(f"j{i}", float(i))
        ids = [f"b{i}" for i in range(100)]
        store.wait_columns(ids, 1.0, "v1", np.zeros(100), np.zeros(100), None, None)
        return store

    store = filled()
    made = {name: _keeps_hashes(d) for name, d in parts(store).items()}
    for form in ("snapshot", "portable"):
        back = pickle.loads(pickle.dumps(store.copy(portable=form == "portable")))
        assert back.counts() == store.counts()
        made.update({f"{name} ({form})": _keeps_hashes(d) for name, d in parts(back).items()})
    store.clear()
    made.update({f"{name} (cleared)": _keeps_hashes(d) for name, d in parts(store).items()})
    fresh = JoinStore(3600, 1000)
    made.update({f"{name} (new)": _keeps_hashes(d) for name, d in parts(fresh).items()})
    assert made == dict.fromkeys(made, True)
