"""Runnable examples: the same small service wrapped by buttress in every supported framework."""
