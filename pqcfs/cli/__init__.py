"""Command line: one module per subcommand; exit codes only here."""
