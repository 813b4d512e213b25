"""Quantization: LiteML-style YAML rules, the LiteML adapter, and the open W8A8 backend (docs/quantization.md)."""
