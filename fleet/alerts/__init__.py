"""Alerts: pure rules (rules.py) judge each device and site, reconcile.py keeps at most one
open alert per subject and kind in the database, webhook.py tells the outside world."""
