"""The embedded demo: a small real model (SmolLM2-135M-Instruct) and synthetic OpenOrca-schema data."""
