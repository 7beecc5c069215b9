"""The file system: a vault core (plain Python, testable without a kernel) and a thin
pyfuse3 Operations layer that only translates requests and errors."""
