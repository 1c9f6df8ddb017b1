"""Configuration shared by the ingress and the stream processor."""
