"""Start Lacker Studio as Hugging Face Spaces does: `python app.py` (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT honoured)."""

import sys

import studio

if __name__ == "__main__":
    studio.main(sys.argv[1:])
