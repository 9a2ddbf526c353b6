"""tunegate: a self-hosted, OpenAI-compatible fine-tuning platform with server-enforced safety."""

__version__ = "0.1.0"
