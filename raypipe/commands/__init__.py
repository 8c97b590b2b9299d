"""Groups of ``raypipe`` subcommands, each a module named after what it manages."""
