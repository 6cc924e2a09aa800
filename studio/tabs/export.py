"""Export tab: download the merged model or the adapter as a zip, copy it to a folder, push it to
the Hub with a model card, and the Python that loads it; or export it as GGUF (llama.cpp, Ollama) or ONNX,
checked against the trained model in that format's runtime, with its parity result, a download and the lines
that serve it. Each button has its own message box right under it, so what went wrong is said where the user
looked."""

from __future__ import annotations

import gradio as gr

from engine.export.serving import loading_snippet
from studio.exporting import (CONVERSIONS, conversion_report, conversions_for, conversions_table, convert,
                              exported_path, parity_markdown, push_model, save_model, served_name, serving, zip_model)
from studio.tabs.compare import comparable_runs
from studio.ui import error_box, hide_error, show_error

KIND_CHOICES = [("Merged model (loads without this package)", "merged"), ("LoRA adapter only", "adapter")]
REPO_PLACEHOLDERS = {"embedding": "your-name/my-embedding-model", "reranker": "your-name/my-reranker",
                     "classifier": "your-name/my-classifier"}


def build(studio, ui) -> None:
    with gr.Row():
        run_pick = gr.Dropdown(label="Run", choices=comparable_runs(studio), scale=4, allow_custom_value=True,
                               elem_id="export-run")
        kind = gr.Radio(KIND_CHOICES, value="merged", label="What to export", scale=3)
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Download")
            zip_btn = gr.Button("Build the zip", variant="primary", elem_id="export-zip")
            zip_error = error_box("export-zip-error")
            download = gr.File(label="Download", interactive=False, elem_id="export-download")
            gr.Markdown("### Save to a folder on this machine")
            destination = gr.Textbox(label="Folder (a new one inside the runs folder or an allowed folder)",
                                     placeholder=str(studio.settings.home / "exports" / "my-model"))
            save_btn = gr.Button("Save", elem_id="export-save")
            save_error = error_box("export-save-error")
            saved_md = gr.Markdown(elem_id="export-save-result")
        with gr.Column():
            gr.Markdown("### Push to the Hugging Face Hub")
            repo_id = gr.Textbox(label="Repository", placeholder=REPO_PLACEHOLDERS["embedding"], elem_id="export-repo")
            private = gr.Checkbox(True, label="Private repository")
            token = gr.Textbox(label="Hub token (write access)", type="password",
                               placeholder="leave empty to use the studio's HF_TOKEN secret")
            push_btn = gr.Button("Push", elem_id="export-push")
            push_error = error_box("export-push-error")
            pushed_md = gr.Markdown(elem_id="export-push-result")
    snippet = gr.Code(label="Load the result", language="python", elem_id="export-snippet")
    gr.Markdown("### GGUF and ONNX, checked against the trained model")
    with gr.Row():
        with gr.Column():
            conversion = gr.Radio(CONVERSIONS, value="gguf:q8_0", label="Format",
                                  elem_id="export-format")
            convert_btn = gr.Button("Export and check", variant="primary", elem_id="export-convert")
            convert_error = error_box("export-convert-error")
            parity_md = gr.Markdown(elem_id="export-parity")
            converted = gr.File(label="Download the export", interactive=False, elem_id="export-file")
        with gr.Column():
            conversions_md = gr.Markdown(elem_id="export-formats")
    serve_shell = gr.Code(label="Serve it", language="shell", elem_id="export-serve")
    serve_python = gr.Code(label="Load it in Python", language="python", elem_id="export-serve-python")

    def describe(run_id, what):
        """The Python that loads the run's model of its task as `what` (merged or adapter), and the repository
        placeholder named for its task."""
        try:
            run = studio.store.get(run_id)
        except KeyError:
            return "", gr.update()
        snippet = loading_snippet(run.task, f"{run.run_dir}/{what}", run.model if what == "adapter" else None)
        return snippet, gr.update(placeholder=REPO_PLACEHOLDERS[run.task])

    # Each handler returns (its result, its own message box); a failure also clears the result of the last try.
    def build_zip(run_id, what):
        if not run_id:
            return None, show_error("pick a finished run first")
        try:
            return str(zip_model(studio.store.get(run_id), what, studio.settings)), hide_error()
        except (OSError, ValueError) as problem:
            return None, show_error(str(problem))

    def save(run_id, what, folder):
        if not run_id or not (folder or "").strip():
            return "", show_error("pick a run and type a folder")
        try:
            target = save_model(studio.store.get(run_id), what, folder.strip(), studio.settings)
        except (OSError, ValueError) as problem:  # PathNotAllowed is a ValueError
            return "", show_error(str(problem))
        return f"Saved to `{target}`.", hide_error()

    def push(run_id, what, repo, is_private, typed_token):
        if not run_id:
            return "", show_error("pick a finished run first")
        try:
            url = push_model(studio.store.get(run_id), what, repo, typed_token, bool(is_private))
        except (RuntimeError, OSError, ValueError) as problem:
            return "", show_error(str(problem))
        return f"Pushed: [{url}]({url})", hide_error()

    def show_conversions(run_id, choice):
        """The run's exports so far, the format choices its task has, and the lines that serve the chosen one."""
        try:
            run = studio.store.get(run_id)
        except KeyError:
            return gr.update(), "", "", "", ""
        choices, gguf_note = conversions_for(run)
        if choice not in [value for _, value in choices]:
            choice = choices[-1][1]
        exported = exported_path(run, choice)
        lines = serving(run, exported, served_name(run, choice))
        report = conversion_report(run, choice)
        shown = parity_markdown(choice, report) if report else ""
        return (gr.update(choices=choices, value=choice), formats_note(run, gguf_note), shown, lines["shell"],
                lines["python"])

    def formats_note(run, gguf_note: str) -> str:
        """The run's exports so far, after why GGUF is not offered (conversions_for) where it is not."""
        return f"{gguf_note}\n\n{conversions_table(run)}" if gguf_note else conversions_table(run)

    def convert_run(run_id, choice, progress=gr.Progress()):
        if not run_id:
            return "", None, gr.update(), gr.update(), gr.update(), show_error("pick a finished run first")
        try:
            run = studio.store.get(run_id)
            done = convert(run, choice, studio.settings,
                           progress=lambda message, fraction: progress(fraction or 0.0, desc=message))
        except (OSError, ValueError, RuntimeError) as problem:
            return "", None, gr.update(), gr.update(), gr.update(), show_error(str(problem))
        return (parity_markdown(choice, done.report), str(done.download), formats_note(run, conversions_for(run)[1]),
                done.snippets["shell"], done.snippets["python"], hide_error())

    def refresh_runs(current):
        choices = comparable_runs(studio)
        ids = [c[1] for c in choices]
        return gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    for trigger in (run_pick.change, kind.change):
        trigger(describe, [run_pick, kind], [snippet, repo_id], api_visibility="private")
    shown = [conversion, conversions_md, parity_md, serve_shell, serve_python]
    run_pick.change(show_conversions, [run_pick, conversion], shown, api_visibility="private")
    conversion.input(show_conversions, [run_pick, conversion], shown, api_visibility="private")
    convert_btn.click(convert_run, [run_pick, conversion],
                      [parity_md, converted, conversions_md, serve_shell, serve_python, convert_error],
                      api_name="export_convert")
    zip_btn.click(build_zip, [run_pick, kind], [download, zip_error], api_name="export_zip")
    save_btn.click(save, [run_pick, kind, destination], [saved_md, save_error], api_name="export_save")
    push_btn.click(push, [run_pick, kind, repo_id, private, token], [pushed_md, push_error], api_name="push_to_hub")
    ui.export_tab.select(refresh_runs, run_pick, run_pick, api_visibility="private")
    ui.export_run = run_pick
