"""Transports: the gRPC peer mesh and dealer link, and an in-memory mesh for tests."""
