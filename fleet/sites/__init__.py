"""Sites as the fleet sees them: `queries` counts each site's devices by state, its agent and its
alerts, within the caller's scope; `schemas` is what the API and the pages show."""
