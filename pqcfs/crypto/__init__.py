"""Pure cryptography: bytes in, bytes out. No pyfuse3, no trio, no file system."""
