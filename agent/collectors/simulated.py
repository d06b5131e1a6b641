"""The `simulated` collector: SNMP against a simulated device's illustrative objects.

Public sources show no SNMP on the Seewo, Dazzleview or Weidong panels; their profiles keep
illustrative SNMP objects (under the RFC 5612 documentation arc) for the demo and tests only,
under this protocol name. The agent runs it only against simulated devices, that is with an
address map (agent.collectors.steps_for), never at a real site.
"""

from __future__ import annotations

from agent.collectors import register
from agent.collectors.snmp import SnmpCollector


@register("simulated")
class SimulatedCollector(SnmpCollector):
    """An SNMP collector of its own (its own engine): the profile's `snmp` objects."""
