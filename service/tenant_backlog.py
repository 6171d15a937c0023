"""Each tenant's count of outputs waiting to be scored (`Keys.pending_by_tenant`): what
REDLINE_MAX_PENDING_PER_TENANT bounds and REDLINE_TENANT_FAIR_SHARE reads. Every script that adds to
or takes from the pending set keeps the counts in step with it (`store_scripts.PENDING`); this reads
them, and counts them from the pending set itself once, for the outputs queued before they existed."""

from __future__ import annotations

from typing import cast

from redis import Redis

from .keys import Keys, text
from .store_scripts import PENDING

# KEYS[1] = pending zset, KEYS[2] = pending by tenant, KEYS[3] = the counted marker. Once per deployment
# (the marker): sets each tenant's count to its members of the pending set, keeping drained tenants'
# fields at 0; returns how many were counted, or -1 when it was done before. One step, so no script
# that moves an output in or out runs in between.
RECOUNT = PENDING + """
if not redis.call('SET', KEYS[3], '1', 'NX') then return -1 end
local counts, ids = {}, redis.call('ZRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  local t = tenant_of(id)
  counts[t] = (counts[t] or 0) + 1
end
for _, t in ipairs(redis.call('HKEYS', KEYS[2])) do redis.call('HSET', KEYS[2], t, counts[t] or 0) end
for t, n in pairs(counts) do redis.call('HSET', KEYS[2], t, n) end
return #ids
"""


class TenantBacklog:
    """The per-tenant counts under one key prefix."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self._recount = redis.register_script(RECOUNT)

    def counts(self) -> dict[str, int]:
        """Outputs waiting to be scored, by tenant (`default` for the open mode's)."""
        return {text(k): int(v) for k, v in self.redis.hgetall(self.keys.pending_by_tenant).items()}

    def count(self, tenant: str) -> int:
        """Outputs of `tenant` waiting to be scored."""
        return int(cast("bytes | None", self.redis.hget(self.keys.pending_by_tenant, tenant)) or 0)

    def recount_once(self) -> int | None:
        """Count the pending set by tenant, unless that was done before in this deployment; returns how
        many outputs were counted, or None. The scripts count from the release that brought the counts:
        outputs an earlier release queued were in no count, which read low until they were scored."""
        counted = int(self._recount(keys=[self.keys.pending, self.keys.pending_by_tenant,
                                          self.keys.pending_counted]))
        return None if counted < 0 else counted
