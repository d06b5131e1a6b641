"""Usage reports: raw samples rolled up into hours and sessions (rollup), figures computed from
those (compute), rendered as JSON, CSV, XLSX or HTML (formats, html), and stored monthly
(scheduled). The stored ones, within a vendor's scope, are listed by `queries` for the API and
the reports page alike."""
