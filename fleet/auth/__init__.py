"""Who may see and do what: users and tokens, roles and scopes, enrolment, broker
credentials and the audit log. `permissions.Permission` is the one dependency every route
declares; `fleet.api.deps.Caller` is its result."""
