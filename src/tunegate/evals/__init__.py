"""Evals: OpenAI's Evals API (evals, runs, output items) over graders, run by the server's engine."""
