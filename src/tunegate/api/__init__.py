"""HTTP edge: the FastAPI app factory, shared dependencies and the conversion of errors to JSON."""
