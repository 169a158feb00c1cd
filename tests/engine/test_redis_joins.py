"""The shared join store on a real redis-server: the same decisions as the in-process one, replays, replicas, bounds."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time

import pytest

redis = pytest.importorskip("redis")

from exporter.config import Joins  # noqa: E402
from exporter.engine.joins import DUP, DUP_JOIN, EARLY, INLINE, JOINED, WAITING, EarlyLabel, JoinStore, Pending  # noqa: E402
from exporter.engine.redis_joins import JoinStoreUnavailable, RedisJoinStore, connect  # noqa: E402

T = 1_800_000_000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def client(redis_url):
    c = connect(Joins(backend="redis", redis_url=redis_url, redis_timeout_seconds=2.0))
    c.flushdb()
    yield c
    c.close()


def pending(at: float, version="v1", prediction=1, scores=(0.75,), segments=None) -> Pending:
    return Pending(at, version, at - 3.5, prediction, scores, segments)


def dump_model(client, store: RedisJoinStore) -> dict:
    """Everything the store keeps of its model, except key expiries."""
    out = {}
    for key in store.keys:
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"string":
            out[key] = client.get(key)
    return out


# -- random operations applied to both stores ------------------------------------------------------


class Ops:
    """Seeded random batches of predictions and labels over a small id space: duplicates, labels before
    predictions, inline labels, batches repeating an id, and (with a small cap and TTL) evictions and expiries."""

    def __init__(self, seed: int, ids: int):
        self.rng = random.Random(seed)
        self.ids = [f"id{i}" for i in range(ids)]
        self.now = T
        self.calls = 0

    def label(self):
        return self.rng.randrange(3) if self.rng.random() < 0.6 else self.rng.uniform(-5, 5)

    def next(self) -> tuple:
        """("predictions" | "labels", items, now, token) or ("expire", None, now, None)."""
        rng = self.rng
        self.now += rng.choice((0.0, 0.0, 0.5, 1.0, 3.0))
        self.calls += 1
        token = "" if rng.random() < 0.1 else f"req-{self.calls}"
        r = rng.random()
        if r < 0.08:
            return "expire", None, self.now, None
        n = rng.randint(1, 6)
        if r < 0.55:
            items = []
            for _ in range(n):
                p = Pending(
                    self.now,
                    rng.choice(("v1", "v2")),
                    self.now - rng.uniform(0, 10),
                    rng.randrange(3) if rng.random() < 0.7 else rng.uniform(-1, 1),
                    tuple(rng.random() for _ in range(rng.randint(1, 3))) if rng.random() < 0.7 else None,
                    (rng.choice(("a", "b")), "other") if rng.random() < 0.3 else None,
                )
                items.append((rng.choice(self.ids), p, self.label() if rng.random() < 0.25 else None))
            return "predictions", items, self.now, token
        return "labels", [(rng.choice(self.ids), self.label()) for _ in range(n)], self.now, token


def apply(store, op: tuple):
    kind, items, now, token = op
    if kind == "expire":
        store.expire(now)
        return None
    if kind == "predictions":
        return store.join_predictions(items, now, token)
    return store.join_labels(items, now, token)


@pytest.mark.parametrize("seed", range(4))
def test_redis_store_decides_exactly_like_the_in_process_store(client, seed):
    ttl, cap = 6.0, 8
    local = JoinStore(ttl, cap)
    shared = RedisJoinStore(client, "mlmon", f"m{seed}", ttl, cap)
    ops = Ops(seed, ids=25)
    for step in range(800):
        op = ops.next()
        assert apply(shared, op) == apply(local, op), f"step {step}: {op}"
        assert shared.counts() == local.counts(), f"step {step}"
        assert shared.take_dropped() == local.take_dropped(), f"step {step}"


def test_random_sequences_reach_every_result_and_drop():
    """The differential test above is only as good as what its sequences exercise."""
    local = JoinStore(6.0, 8)
    ops = Ops(0, ids=25)
    results, drops = set(), dict.fromkeys(local.dropped, 0)
    for _ in range(800):
        for r in apply(local, ops.next()) or ():
            results.add(r[0] if r[0] != INLINE else r)
        for k, v in local.take_dropped().items():
            drops[k] += v
    assert results == {DUP, DUP_JOIN, (INLINE, True), (INLINE, False), EARLY, WAITING, JOINED}
    assert all(n for (kind, reason), n in drops.items() if reason != "version_retired")


# -- replays ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_a_replayed_call_gets_its_first_answers_and_changes_nothing(client, seed):
    """Replays of earlier calls, at random later points and between other requests, answer as the first run
    and leave the store as the in-process store (which never sees them) has it. Nothing is evicted or expired
    here: a replay is exact while the records of its first run are kept."""
    local = JoinStore(1e9, 10_000)
    shared = RedisJoinStore(client, "mlmon", f"replay{seed}", 1e9, 10_000)
    ops = Ops(100 + seed, ids=20)
    history = []  # (op, its first answers) of calls with a token
    replays = 0
    for step in range(700):
        op = ops.next()
        if op[0] == "expire":
            continue
        first = apply(shared, op)
        assert first == apply(local, op), f"step {step}"
        if op[3]:
            history.append((op, first))
        if ops.rng.random() < 0.4:
            old, answers = ops.rng.choice(history)
            before = dump_model(client, shared)
            assert apply(shared, old) == answers, f"step {step}: replay of {old}"
            assert dump_model(client, shared) == before
            assert shared.counts() == local.counts()
            replays += 1
    assert replays > 200
    assert shared.take_dropped() == local.take_dropped()


def test_replays_of_each_item_of_a_batch_with_a_repeated_id(client):
    store = RedisJoinStore(client, "mlmon", "m", 3600, 100)
    p = pending(T)
    items = [("a", p, None), ("a", p, None), ("a", pending(T, prediction=0), 1), ("a", p, 1)]
    first = store.join_predictions(items, T, "req-1")
    assert first == [(WAITING, None), (DUP, None), (DUP_JOIN, p), (DUP, None)]
    assert store.join_predictions(items, T + 5, "req-1") == first
    assert store.join_labels([("a", 0)], T + 6, "req-2") == [(DUP, None)]
    assert store.join_predictions(items, T + 7, "req-1") == first
    assert store.counts() == (0, 0)


def test_a_label_replayed_after_a_prediction_took_it_still_waited(client):
    store = RedisJoinStore(client, "mlmon", "m", 3600, 100)
    assert store.join_labels([("a", 1), ("b", 0.5)], T, "labels-1") == [(WAITING, None), (WAITING, None)]
    p = pending(T + 1)
    # "a" joins the early label; "b" comes with its own label, and the early one is a duplicate.
    got = store.join_predictions([("a", p, None), ("b", p, 2.0)], T + 1, "preds-1")
    assert got == [(EARLY, EarlyLabel(T, 1)), (INLINE, True)]
    assert store.join_labels([("a", 1), ("b", 0.5)], T + 2, "labels-1") == [(WAITING, None), (WAITING, None)]
    assert store.join_predictions([("a", p, None), ("b", p, 2.0)], T + 3, "preds-1") == got
    assert store.join_labels([("a", 1)], T + 4, "labels-2") == [(DUP, None)]
    assert store.counts() == (0, 0)


def test_a_prediction_replayed_after_a_label_joined_it_still_waited(client):
    store = RedisJoinStore(client, "mlmon", "m", 3600, 100)
    p = pending(T, scores=(0.1, 0.2, 0.7), segments=("EU", "other"))
    assert store.join_predictions([("a", p, None)], T, "preds-1") == [(WAITING, None)]
    assert store.join_labels([("a", 2)], T + 1, "labels-1") == [(JOINED, p)]
    assert store.join_predictions([("a", p, None)], T + 2, "preds-1") == [(WAITING, None)]
    assert store.join_labels([("a", 2)], T + 3, "labels-1") == [(JOINED, p)]
    assert store.join_predictions([("a", p, None)], T + 4, "preds-2") == [(DUP, None)]


def test_calls_without_a_token_are_never_taken_for_replays(client):
    store = RedisJoinStore(client, "mlmon", "m", 3600, 100)
    p = pending(T)
    assert store.join_predictions([("a", p, None)], T, "") == [(WAITING, None)]
    assert store.join_predictions([("a", p, None)], T, "") == [(DUP, None)]
    assert store.join_labels([("b", 1)], T, "") == [(WAITING, None)]
    assert store.join_labels([("b", 1)], T, "") == [(DUP, None)]


def test_a_replay_whose_first_run_never_happened_is_decided_as_new(client):
    store = RedisJoinStore(client, "mlmon", "m", 3600, 100)
    p = pending(T)
    # The journal had the request, the crash came before the call: the replay is its first run.
    assert store.join_predictions([("a", p, 1)], T, "req-9") == [(INLINE, False)]
    assert store.join_predictions([("a", p, 1)], T, "req-9") == [(INLINE, False)]


# -- replicas --------------------------------------------------------------------------------------


def test_a_prediction_on_one_replica_joins_its_label_on_another(redis_url):
    config = Joins(backend="redis", redis_url=redis_url, redis_timeout_seconds=2.0)
    a_client, b_client = connect(config), connect(config)
    a_client.flushdb()
    a = RedisJoinStore(a_client, "mlmon", "churn", 3600, 100)
    b = RedisJoinStore(b_client, "mlmon", "churn", 3600, 100)
    p = Pending(T, "v7", T - 0.25, 0.125, None, ("premium",))
    assert a.join_predictions([("x", p, None)], T, "a-1") == [(WAITING, None)]
    assert b.counts() == (1, 0)
    got = b.join_labels([("x", 3.5)], T + 60, "b-1")
    assert got == [(JOINED, p)]
    assert type(got[0][1].prediction) is float and got[0][1].segments == ("premium",)
    # And the other way round: the label comes first, on a.
    assert a.join_labels([("y", 1)], T + 61, "a-2") == [(WAITING, None)]
    assert b.join_predictions([("y", pending(T + 62), None)], T + 62, "b-2") == [(EARLY, EarlyLabel(T + 61, 1))]
    assert a.counts() == b.counts() == (0, 0)
    # Another model's store on the same Redis is apart.
    other = RedisJoinStore(b_client, "mlmon", "price", 3600, 100)
    assert other.join_labels([("x", 1.0)], T + 63, "b-3") == [(WAITING, None)]
    a_client.close()
    b_client.close()


def test_pending_values_come_back_with_their_types(client):
    store = RedisJoinStore(client, "mlmon", "m", 3600, 100)
    p = Pending(T + 0.1, "v1", 1_799_999_999.123456789, 2, (0.1, 0.2, 0.7000000000000001), None)
    store.join_predictions([("a", p, None)], T, "1")
    ((kind, got),) = store.join_labels([("a", 2)], T, "2")
    assert got == p and type(got.prediction) is int and type(got.scores) is tuple


def test_keys_of_a_model_share_one_cluster_slot(client):
    from redis.crc import key_slot

    store = RedisJoinStore(client, "mlmon", "churn", 3600, 100)
    assert len({key_slot(k.encode()) for k in store.keys}) == 1
    assert all(k.startswith("{mlmon:churn}:") for k in store.keys)


# -- bounds ----------------------------------------------------------------------------------------


def test_over_the_cap_the_oldest_goes_and_is_counted_by_the_replica_that_evicted_it(client):
    a = RedisJoinStore(client, "mlmon", "m", 3600, 3)
    b = RedisJoinStore(client, "mlmon", "m", 3600, 3)
    for i in range(3):
        a.join_predictions([(f"p{i}", pending(T + i), None)], T + i, f"a{i}")
    b.join_predictions([("p3", pending(T + 3), None), ("p4", pending(T + 4), None)], T + 4, "b0")
    assert b.take_dropped()["prediction", "evicted"] == 2
    assert a.take_dropped()["prediction", "evicted"] == 0
    assert b.join_labels([("p0", 1), ("p2", 1)], T + 5, "b1") == [(WAITING, None), (JOINED, pending(T + 2))]
    b.join_labels([("q1", 1), ("q2", 1), ("q3", 1)], T + 6, "b2")
    assert b.take_dropped()["label", "evicted"] == 1  # p0, the oldest early label
    assert b.counts() == (2, 3)


def test_entries_older_than_the_ttl_expire_and_are_counted(client):
    store = RedisJoinStore(client, "mlmon", "m", 100, 1000)
    store.join_predictions([("a", pending(T), None), ("b", pending(T + 50), None)], T + 50, "1")
    store.join_labels([("c", 1)], T + 60, "2")
    store.join_labels([("b", 1)], T + 60, "3")  # joined at T + 60
    store.expire(T + 100)  # nothing older than T
    assert store.counts() == (2 - 1, 1)
    store.expire(T + 100.5)
    assert store.counts() == (0, 1)
    store.expire(T + 161)
    assert store.counts() == (0, 0)
    assert store.take_dropped() == {
        ("prediction", "expired"): 1,
        ("prediction", "evicted"): 0,
        ("prediction", "version_retired"): 0,
        ("label", "expired"): 1,
        ("label", "evicted"): 0,
    }
    assert client.hlen(store.keys[4]) == 0  # the joined id went too: "b" is new again
    assert store.join_labels([("b", 1)], T + 162, "4") == [(WAITING, None)]


def test_expiry_of_many_entries_goes_in_steps(client, monkeypatch):
    from exporter.engine import redis_joins

    monkeypatch.setattr(redis_joins, "EXPIRE_STEP", 7)
    store = RedisJoinStore(client, "mlmon", "m", 10, 1000)
    store.join_predictions([(f"p{i}", pending(T), None) for i in range(30)], T, "1")
    store.join_labels([(f"q{i}", 0) for i in range(20)], T, "2")
    store.expire(T + 11)
    assert store.counts() == (0, 0)
    dropped = store.take_dropped()
    assert dropped["prediction", "expired"] == 30 and dropped["label", "expired"] == 20


def test_memory_stays_bounded_by_the_cap_and_the_key_expiry(client):
    store = RedisJoinStore(client, "mlmon", "m", 60, 10)
    rng = random.Random(7)
    for i in range(300):
        store.join_predictions([(f"p{i}", pending(T + i), rng.choice((None, 1)))], T + i, f"p{i}")
        store.join_labels([(f"l{i}", 0), (f"p{i - 5}", 1)], T + i, f"l{i}")
    for key in store.keys:
        if client.type(key) in (b"hash", b"zset"):
            size = client.hlen(key) if client.type(key) == b"hash" else client.zcard(key)
            assert 0 < size <= 10, key
        assert 0 < client.pttl(key) <= 120_000, key  # twice the TTL
    assert len(client.keys("*")) == 7


# -- failures --------------------------------------------------------------------------------------


def test_an_unreachable_redis_raises_join_store_unavailable_naming_it_without_password():
    port = free_port()
    c = connect(Joins(backend="redis", redis_url=f"redis://:s3cret@127.0.0.1:{port}/2", redis_timeout_seconds=0.5))
    store = RedisJoinStore(c, "mlmon", "m", 60, 10)
    for call in (
        lambda: store.join_predictions([("a", pending(T), None)], T, "1"),
        lambda: store.join_labels([("a", 1)], T, "2"),
        lambda: store.counts(),
        lambda: store.expire(T),
    ):
        with pytest.raises(JoinStoreUnavailable) as err:
            call()
        assert f"redis://127.0.0.1:{port}/2" in str(err.value)
        assert "s3cret" not in str(err.value)


def test_a_redis_that_forgot_the_scripts_gets_them_again(client):
    """After a restart Redis has no scripts cached; EVALSHA fails once and the client loads them."""
    store = RedisJoinStore(client, "mlmon", "m", 60, 10)
    client.script_flush()
    assert store.join_labels([("a", 1)], T, "1") == [(WAITING, None)]
    client.script_flush()
    assert store.counts() == (0, 1)


def test_the_password_comes_from_a_file(redis_url, tmp_path):
    """joins.redis_password_file: the password reaches Redis (a wrong one is refused), never the config."""
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("requirepass", "s3cret")
    try:
        secret = tmp_path / "redis_password"
        secret.write_text("s3cret\n")
        good = connect(Joins(backend="redis", redis_url=redis_url, redis_password_file=str(secret)))
        assert good.ping()
        secret.write_text("wrong\n")
        bad = connect(Joins(backend="redis", redis_url=redis_url, redis_password_file=str(secret)))
        with pytest.raises(redis.AuthenticationError):
            bad.ping()
        with pytest.raises(JoinStoreUnavailable, match="redis_password_file"):
            connect(Joins(backend="redis", redis_url=redis_url, redis_password_file=str(tmp_path / "none")))
    finally:
        admin = redis.Redis.from_url(redis_url, password="s3cret")
        admin.config_set("requirepass", "")
