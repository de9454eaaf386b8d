"""Process entry points: party, dealer. Thin: parse arguments, build objects from mpc, serve."""
