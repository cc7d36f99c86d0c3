"""relpos.data."""
