"""Firmware rollouts: releases, campaigns in waves, maintenance windows, the tick."""
