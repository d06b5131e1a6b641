"""The contract between the site agent and the controller, the one part of `fleet` the agent
imports.

- `messages`: what travels over MQTT (readings, batches, agent state, events, commands, acks)
  and its topics.
- `site_config`, `profiles`, `releases`, `timetable`: the YAML documents both sides read.
- `broker_url`: where the broker is and how to log in, from one URL.
- `errors`, `documents`: how a bad document is reported (file, key, fix).
- `secret_refs`, `snmpv3`: how a document names a secret and an SNMPv3 user it does not hold.

It depends on pydantic, PyYAML and tzdata only, so that `pip install .[agent]` stays small.
"""
