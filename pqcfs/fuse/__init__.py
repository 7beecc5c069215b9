"""The FUSE translation: pyfuse3 requests in, VaultFS calls out, domain errors to errno.
The only package (with the session that serves it) that imports pyfuse3."""
