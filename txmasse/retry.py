"""
The one retry policy: everything in txmasse that tries again (registering
a peer, a watch catching up, the resolver watching a name) waits by
Twisted's L{backoffPolicy}: doubling from a first delay up to a cap, with
jitter, so processes that failed together do not retry in step.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.application.internet import backoffPolicy


def retryPolicy(initialDelay: float, maxDelay: float) -> Callable[[int], float]:
    """
    Seconds to wait before the next try, given how many failed so far: from
    C{initialDelay} doubling up to C{maxDelay}, plus up to a quarter of
    C{initialDelay} of jitter.
    """
    return backoffPolicy(
        initialDelay=initialDelay,
        maxDelay=maxDelay,
        factor=2.0,
        jitter=lambda: random.random() * initialDelay / 4,
    )
