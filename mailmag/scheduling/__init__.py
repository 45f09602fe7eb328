"""When things happen: timed sends, automatic issues, send windows, and `mailmag run`."""
