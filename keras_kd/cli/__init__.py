"""The `keras-kd` command line: each command maps its arguments to library
calls and prints (the parser is `keras_kd_cli.py`, outside the package)."""
