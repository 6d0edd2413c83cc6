"""Command-line interface (typer). No numerics here: commands parse options and call the library."""
