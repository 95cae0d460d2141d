"""A per-process cache (`costmon.core.cache.VersionedCache`: prices, budget settings, API keys)
loads a key once when a worker's threads miss it together, and other keys meanwhile."""

from __future__ import annotations

import threading
import time

from costmon.core.cache import VersionedCache


def test_threads_that_miss_one_key_together_load_it_once():
    loads: list[str] = []
    counting = threading.Lock()

    def load(key: str) -> str:
        with counting:
            loads.append(key)
        time.sleep(0.05)  # a slow query: every thread arrives while it runs
        return f"value of {key}"

    shared: VersionedCache[str, str] = VersionedCache(
        version_keys=lambda key: ("tests:versioned-cache",), load=load, ttl=lambda: 60
    )
    answers: list[str] = []
    barrier = threading.Barrier(12)

    def ask(key: str) -> None:
        barrier.wait()
        answers.append(shared.get(key))

    threads = [
        threading.Thread(target=ask, args=("acme" if i < 8 else "globex",)) for i in range(12)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(loads) == ["acme", "globex"]  # one load per key, not one per thread
    assert sorted(answers) == ["value of acme"] * 8 + ["value of globex"] * 4
    # A bump makes the next miss load again, once.
    shared.bump("tests:versioned-cache")
    assert shared.get("acme") == "value of acme"
    assert sorted(loads) == ["acme", "acme", "globex"]
    assert shared._loading == {}  # no lock left behind
