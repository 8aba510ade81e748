"""`python -m turnout` is the `turnout` command."""

from turnout.cli.main import main

main()
