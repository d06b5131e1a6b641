"""Power and input commands to devices: sent through the site agents, each with its state
(sent, then done, failed or expired), the device's own answer, and the reading that
confirmed it."""
