"""Alerts: pure rules (rules.py) observe each device and site, hold.py decides when those
observations open and clear an alert, reconcile.py keeps at most one open alert per subject
and kind in the database, webhook.py tells the outside world. queries.py (lists and counts,
within the caller's scope) and actions.py (acknowledge, resolve by hand) are what the API and
the dashboard share; schemas.py is what they show."""
