"""The vault core: the plaintext tree over the replicas' ciphertext (VaultFS, directory
tables, nodes, contents, crash recovery). Plain Python, testable without a kernel: no
pyfuse3, no trio, no session."""
