"""`python -m mailmag` runs the command line."""

from mailmag.cli import main

main()
