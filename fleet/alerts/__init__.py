"""Alerts: pure rules (rules.py) observe each device and site, hold.py decides when those
observations open and clear an alert, reconcile.py keeps at most one open alert per subject
and kind in the database, webhook.py tells the outside world."""
