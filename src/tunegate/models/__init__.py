"""Models stage: which models an organisation may use (base, fine-tuned, checkpoints) and the
`/v1/models` routes. Serving itself is in serve/."""
