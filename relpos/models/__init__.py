"""relpos.models."""
