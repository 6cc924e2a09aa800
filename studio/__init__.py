"""Lacker Studio's web app. `studio.main(argv)` starts it; importing this package does not import
torch (or Gradio): the app must be interactive within seconds, on a CPU Space too."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The studio's flags, shared by `python app.py ...` and `lacker studio ...`."""
    parser.add_argument("--host", help="address to listen on (default GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--auth", help="user:password to require a login (or set LACKER_AUTH)")
    parser.add_argument("--home", help="where runs and the run registry live (or set LACKER_HOME; default ./runs)")
    return parser


def main(argv: list[str] | argparse.Namespace | None = None) -> None:
    """Start the studio; `argv` is the command line after the program name, or flags already parsed."""
    if not isinstance(argv, argparse.Namespace):
        parser = add_arguments(argparse.ArgumentParser(prog="lacker studio",
                                                       description="Start the Lacker Studio web app."))
        argv = parser.parse_args(argv)
    from studio.app import main as run

    run(argv)
