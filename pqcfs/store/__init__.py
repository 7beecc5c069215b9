"""The only code that touches the drives: replicas, atomic writes, device checks."""
