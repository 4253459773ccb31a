"""HTTP endpoints served on loopback: container credentials, health (and later IMDS)."""
