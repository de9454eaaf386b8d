"""The runtime: executes a plan on one party, fusing rounds and prefetching randomness."""
