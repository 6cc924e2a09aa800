"""Lacker Studio's web app. `studio.main(argv)` starts it; importing this package does not import
torch (or Gradio): the app must be interactive within seconds, on a CPU Space too."""


def main(argv: list[str] | None = None) -> None:
    from studio.app import main as run

    run(argv)
