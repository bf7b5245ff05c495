"""`python -m stream.cli`: the `lamstream` command."""

from stream.cli.main import main

main()
