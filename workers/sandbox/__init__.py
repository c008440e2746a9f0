"""Local sandbox infrastructure: real servers on loopback for demos and tests."""
