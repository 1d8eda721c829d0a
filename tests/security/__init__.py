"""Adversarial tests of issue 12: each reproduces an attack or a leak, and fails without its fix."""
