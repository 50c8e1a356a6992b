"""The command line: `vlablocks <command>` (main.py) and one module per subcommand (commands/)."""
