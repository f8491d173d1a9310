"""The ``blindmatch`` command: its argparse tree (``main``), exit codes and errors, config files."""
