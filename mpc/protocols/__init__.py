"""Protocols: generators run by one party that yield what they need and return shares."""
