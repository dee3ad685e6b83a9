"""The sampling policy in force, and the fleet's way to replace it: a retained JSON message on
``<prefix>/<device>/config/sampling`` (docs/sampling.md).

A valid policy replaces the ``samples`` section at once; an empty message restores the YAML's; anything else (bad
JSON, deep nesting, a wrong field, any exception while parsing or applying it) is reported on
``config/sampling/status`` and the policy in force stays. A message from the network can never stop the agent: a
retained bad policy would otherwise stop it again at every restart.
"""
import logging
from typing import Optional

from ..contract import payloads, topics
from ..contract.policy import SamplingPolicy, parse_policy
from ..errors import ConfigError
from .outbox import Outbox
from .sampling import Sampler

log = logging.getLogger(__name__)


class PolicyManager(object):
    def __init__(self, configured: SamplingPolicy, device_id: str, prefix: str, outbox: Outbox) -> None:
        self.configured = configured
        self.device_id = device_id
        self.outbox = outbox
        self.topic = topics.topic(prefix, device_id, *topics.POLICY)
        self.status_topic = topics.topic(prefix, device_id, *topics.POLICY_STATUS)
        self.sampler = Sampler(configured)
        self.source = "config"
        self._payload: Optional[bytes] = None

    def apply(self, payload: bytes) -> bool:
        """Apply a policy message (the retained copy again after a reconnect is ignored); True when applied."""
        if payload == self._payload:
            return False
        self._payload = payload
        try:
            policy, source = (parse_policy(payload), "fleet") if payload else (self.configured, "config")
            self._set(policy, source)
        except Exception as exc:  # a remote party's bytes must never stop the agent: any failure is a rejection
            reason = str(exc) if isinstance(exc, ConfigError) else "cannot apply this policy (%s: %s)" % (
                type(exc).__name__, str(exc)[:300])
            log.warning("sampling policy on %s rejected (the policy in force stays): %s", self.topic, reason)
            self.report("rejected", reason if isinstance(exc, ConfigError) else
                        "%s: %s" % ("config/sampling payload", reason))
            return False
        log.info("sampling policy from %s applied", "the fleet" if source == "fleet" else "the config")
        self.report("applied")
        return True

    def _set(self, policy: SamplingPolicy, source: str) -> None:
        fresh = Sampler(policy)
        fresh.carry_over(self.sampler)
        self.sampler, self.source = fresh, source

    def report(self, state: str, error: Optional[str] = None) -> None:
        body = payloads.policy_status(self.device_id, state, self.source, self.sampler.policy.model_dump(mode="json"),
                                      error)
        self.outbox.put("state", self.status_topic, payloads.encode(body), qos=1, retain=True)
