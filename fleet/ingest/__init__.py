"""Health in from MQTT: `subscriber` (the broker session), `parse` (topic and payload checks),
`pipeline` (a message from receipt to acknowledgement) and `store` (the database writes)."""
