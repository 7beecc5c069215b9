"""pqcfs: a post-quantum encrypted, mirrored FUSE filesystem for removable drives."""

__version__ = "0.1.0"
