"""The subcommands of ``capscale`` (the parser is ``capscale.cli``): ``harness`` runs models, ``forecast``
reads ladder tables. Each command is a function of the parsed arguments returning the exit code."""
