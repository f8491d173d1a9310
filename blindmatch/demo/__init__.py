"""The demo and its sample data: a local federation on loopback, driven through the CLI only."""
