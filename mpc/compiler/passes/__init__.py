"""Compiler passes, one module each: pruning, deferred truncation, BatchNorm folding,
public-weight specialisation. Scheduling is mpc.compiler.schedule."""
