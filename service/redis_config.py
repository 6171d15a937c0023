"""Redis settings under which Redline can lose accepted outputs, read from the server's INFO.

Redline promises that every accepted output is scored; Redis's configuration can break that
without any error reaching Redline. Workers check at start and warn (the operator owns Redis's
configuration, and managed services often refuse CONFIG SET, so nothing is changed).
"""

from __future__ import annotations

from typing import Any, cast

from redis import Redis
from redis.exceptions import ResponseError


def risks(redis: Redis) -> list[str]:
    """One sentence per risky setting, saying what it costs and what to set; [] when none is found."""
    try:
        memory = cast("dict[str, Any]", redis.info("memory"))
        persistence = cast("dict[str, Any]", redis.info("persistence"))
    except ResponseError as exc:  # INFO disabled (some managed services rename it)
        return [f"could not read Redis INFO ({exc}): check yourself that maxmemory-policy is noeviction "
                "and appendonly is yes"]
    found = []
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        found.append(f"Redis maxmemory-policy is {policy}: when Redis fills up it deletes keys, and Redline's "
                     "output records (which carry a TTL, so volatile-* policies pick them too), queues and "
                     "windows are keys, so accepted outputs can vanish unscored. Set maxmemory-policy "
                     "noeviction: a full Redis then refuses writes, which clients get as 503 (and "
                     "REDLINE_MAX_PENDING's 429 comes first)")
    if not int(persistence.get("aof_enabled", 0)):
        found.append("Redis append-only persistence is off (appendonly no): a Redis restart loses the outputs "
                     "accepted since its last snapshot. Set appendonly yes with appendfsync everysec")
    return found
