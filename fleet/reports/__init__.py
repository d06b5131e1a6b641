"""Usage reports: raw samples rolled up into hours and sessions (rollup), figures computed from
those (compute), rendered as JSON, CSV, XLSX or HTML (formats, html), and stored monthly
(scheduled)."""
