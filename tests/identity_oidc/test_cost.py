"""What one verification costs, uncached (signature and claims) and cached (a hash and a lookup).

Printed with ``pytest -s tests/identity_oidc/test_cost.py``; docs/identity.md quotes a run.
The assertion is loose (machines differ): the cache must be far cheaper than verifying.
"""

from __future__ import annotations

import asyncio
import time

from tests.identity_oidc.helpers import issuer_config, open_verifier
from tests.identity_oidc.issuer import LocalIssuer

ROUNDS = 200


def test_verify_cost(local_issuer: LocalIssuer) -> None:
    results: dict[str, tuple[float, float]] = {}

    async def scenario() -> None:
        async with open_verifier(issuer_config("local", local_issuer.issuer)) as verifier:
            for key in local_issuer.keys:
                tokens = [local_issuer.token(key, sub=f"u{n}") for n in range(ROUNDS)]
                await verifier.verify(tokens[0])  # keys fetched outside the timing
                verifier.clear_cache()
                started = time.perf_counter()
                for token in tokens:
                    await verifier.verify(token)
                uncached = (time.perf_counter() - started) / ROUNDS
                started = time.perf_counter()
                for _ in range(5):
                    for token in tokens:
                        await verifier.verify(token)
                cached = (time.perf_counter() - started) / (5 * ROUNDS)
                results[key.alg] = (uncached, cached)

    asyncio.run(scenario())
    for alg, (uncached, cached) in results.items():
        print(f"{alg:6} uncached {uncached * 1e6:8.1f} µs   cached {cached * 1e6:6.1f} µs")
        assert cached * 5 < uncached, alg
