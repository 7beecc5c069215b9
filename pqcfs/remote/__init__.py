"""Offsite replicas: the vault's ciphertext on any rclone remote (docs/offsite.md)."""
