"""dashboard stage."""
