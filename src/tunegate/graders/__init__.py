"""Graders: score a model's answer against a dataset item (OpenAI's grader objects), for the
grader API, eval runs and reinforcement fine-tuning rewards."""
