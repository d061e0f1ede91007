"""Key checks as an attacker would try them, over real HTTP (issue 23, items 6 and 8): failed
checks are rate limited per client address, an unknown key id costs what a known one does, and
/metrics can be kept to the operator's own key."""

from __future__ import annotations

import statistics
import time

import httpx
import pytest

from .conftest import serving

pytestmark = pytest.mark.slow


def _app(**settings):
    from service.app import create_app
    from service.settings import ServiceSettings

    # The deployment's database, broker and store (its environment); these settings on top.
    return create_app(ServiceSettings(key_cache_seconds=0, **settings), configure_logs=False)


def _secret(key: str) -> str:
    """The secret part of ``mcvae_<id>_<secret>``: split from the left, since a url-safe secret
    may hold "_" itself (split from the right, a short tail made the test's unknown-id token too
    short for the token pattern, refused before any lookup: a fast 401 that failed the timing test
    on the runs whose key had one)."""
    return key.split("_", 2)[2]


def _wrong_secret(key: str) -> str:
    return f"{key[:-len(_secret(key))]}{'x' * len(_secret(key))}"


def test_failed_key_checks_are_limited_per_address_then_429(deployment):
    with serving(_app(auth_failures_per_minute=5)) as url, httpx.Client(base_url=url, timeout=30) as c:
        good = {"Authorization": f"Bearer {deployment.keys['lab-a']}"}
        wrong = [{"Authorization": f"Bearer {_wrong_secret(deployment.keys['lab-a'])}"},
                 {"X-API-Key": "mcvae_0123456789_" + "y" * 43},  # an id that does not exist
                 {"Authorization": "Bearer not-even-a-key"}]
        codes = [c.get("/v1/jobs", headers=wrong[i % 3]).status_code for i in range(5)]
        assert codes == [401] * 5
        refused = c.get("/v1/jobs", headers=wrong[0])
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["code"] == "rate_limited" and "failed API key checks" in refused.json()["detail"]
        # The address is refused before any lookup, a right key included, until a token refills
        # (5 per minute: one every 12 s); requests without a key are not guesses.
        assert c.get("/v1/jobs", headers=good).status_code == 429
        assert c.get("/v1/jobs").status_code == 401
        # Counted in the gateway process: one that has seen no failures lets the right key in.
    with serving(_app(auth_failures_per_minute=5)) as url:
        assert httpx.get(f"{url}/v1/jobs", headers=good, timeout=30).status_code == 200


def test_an_unknown_key_id_takes_as_long_as_a_known_one_with_a_wrong_secret(deployment):
    """Medians of interleaved requests: before, the unknown id answered in about half the time
    (no row to load), which told a guesser which key ids exist."""
    key = deployment.keys["lab-a"]
    known = {"Authorization": f"Bearer {_wrong_secret(key)}"}
    unknown = {"Authorization": f"Bearer mcvae_{'0' * 10}_{'x' * len(_secret(key))}"}
    timings: dict[str, list[float]] = {"known": [], "unknown": []}
    with serving(_app(auth_failures_per_minute=1e6)) as url, httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(10):  # warm-up: connections, caches
            c.get("/v1/usage", headers=known), c.get("/v1/usage", headers=unknown)
        for i in range(150):
            pair = [("known", known), ("unknown", unknown)]
            for name, headers in pair if i % 2 else pair[::-1]:  # neither always first
                started = time.perf_counter()
                assert c.get("/v1/usage", headers=headers).status_code == 401
                timings[name].append(time.perf_counter() - started)
    known_ms, unknown_ms = (statistics.median(timings[n]) * 1000 for n in ("known", "unknown"))
    print(f"median 401: known id {known_ms:.2f} ms, unknown id {unknown_ms:.2f} ms")
    assert abs(known_ms - unknown_ms) < max(0.5, 0.15 * unknown_ms), (known_ms, unknown_ms)


def test_verify_key_does_the_same_work_for_unknown_and_known_ids(deployment):
    """The same statements and one digest comparison either way (the timing test's cause)."""
    import hmac

    from sqlalchemy import event

    from service import keys
    from workers import db

    statements, compared = [], []
    real_compare = hmac.compare_digest

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    def compare(a, b):
        compared.append(len(a))
        return real_compare(a, b)

    engine = db.engine()
    event.listen(engine, "before_cursor_execute", record)
    keys.hmac.compare_digest = compare
    try:
        key = deployment.keys["lab-a"]
        seen = {}
        for name, token in (("known", _wrong_secret(key)), ("unknown", f"mcvae_{'0' * 10}_{'x' * 43}")):
            statements.clear(), compared.clear()
            assert keys.verify_key(token) is None
            seen[name] = (list(statements), list(compared))
    finally:
        keys.hmac.compare_digest = real_compare
        event.remove(engine, "before_cursor_execute", record)
    assert seen["known"] == seen["unknown"]
    assert seen["known"][1] == [64]  # one comparison of two sha256 hex digests


def test_metrics_key_keeps_metrics_from_lab_keys(deployment):
    operator = "metrics-" + "z" * 32
    lab_key = {"Authorization": f"Bearer {deployment.keys['lab-a']}"}
    app = _app(metrics_key=operator, auth_failures_per_minute=1e6)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/metrics").status_code == 401
        forbidden = c.get("/metrics", headers=lab_key)
        assert forbidden.status_code == 403 and "MCVAE_METRICS_KEY" in forbidden.json()["detail"]
        assert "mcvae_jobs" not in forbidden.text
        assert c.get("/metrics", headers={"Authorization": "Bearer metrics-wrong"}).status_code == 401
        ok = c.get("/metrics", headers={"Authorization": f"Bearer {operator}"})
        assert ok.status_code == 200 and "mcvae_jobs" in ok.text
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {operator}"}).status_code == 401
        assert c.get("/v1/jobs", headers=lab_key).status_code == 200  # labs keep the API
    # MCVAE_METRICS_PUBLIC still wins: a scrape network reads it with no key at all.
    with serving(_app(metrics_key=operator, metrics_public=True)) as url:
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200
    # Neither set: any lab's key, as before.
    with serving(_app()) as url:
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
        assert httpx.get(f"{url}/metrics", headers=lab_key, timeout=30).status_code == 200
