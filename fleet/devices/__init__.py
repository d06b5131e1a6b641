"""The fleet's devices: `registry` (sites, rooms and devices from the site configs), `state`
(one derived state per device, with its reason), `liveness` (silence of agents and devices)
and `profile_book` (the firmware profiles the controller reads)."""
