"""`python -m mailmag` and the `mailmag` console script run the command line."""

import sys


def run() -> None:
    """Load the command line and run it; a Ctrl-C while it loads (a second or two of imports)
    ends it as click ends a command: one line, exit 1, nothing done yet."""
    try:
        from mailmag.cli import main
    except KeyboardInterrupt:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    main()


if __name__ == "__main__":
    run()
