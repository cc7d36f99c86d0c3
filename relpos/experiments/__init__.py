"""relpos.experiments."""
