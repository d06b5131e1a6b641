"""Firmware rollouts: releases, campaigns in waves, maintenance windows, the tick. `queries`
(the list, one rollout's progress) and `moves` (the operator's start, pause, resume, cancel)
are what the API and the rollouts page share; `schemas` is what they show."""
