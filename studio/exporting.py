"""Getting a run's model out: a zip to download, a copy in an allowed folder, a push to the Hub, or a GGUF / ONNX
export checked against the trained model (engine.export) with the lines that serve it.

Each carries the model card the worker saved with the model (sentence-transformers' card with the
run's settings and before / after metrics), its usage snippet naming where that copy is loaded from.
What goes wrong is said in the page's words: which folders a copy may go to, that a push needs a
token, that the Hub cannot be reached.

The Hub token is used for the one push call and nowhere else: it is not written to the run folder,
the registry, events or logs, and is blanked out of any error text shown to the user.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.hub import name_model_in_card, point_adapter_at_hub_base, push_folder
from studio.preload import engine_stack
from studio.settings import PathNotAllowed, Settings
from studio.store import Run

KINDS = ("merged", "adapter")


def model_folder(run: Run, kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    folder = Path(run.run_dir) / kind
    if not folder.is_dir():
        if kind == "adapter" and run.method == "full":
            raise FileNotFoundError(f"run {run.id} was a full fine-tune: it has no adapter; export the merged model")
        raise FileNotFoundError(f"run {run.id} has no {kind} model (status: {run.status}); "
                                "export needs a run that completed or was stopped after some steps")
    return folder


@contextmanager
def _named_copy(folder: Path, name: str):
    """A temporary copy of `folder`, itself named after the last part of `name`, whose model card loads
    `name`, so the run folder never changes."""
    with tempfile.TemporaryDirectory(prefix="lacker-export-") as staging:
        staged = Path(staging) / Path(name).name
        shutil.copytree(folder, staged)
        name_model_in_card(staged, name)
        yield staged


def zip_model(run: Run, kind: str, settings: Settings) -> Path:
    """downloads/lacker-<run>-<kind>.zip under the runs home, built once. It unzips into one folder of that
    name, which its model card loads. The downloads folder is the only one the studio's file route serves."""
    folder = model_folder(run, kind)
    target = settings.downloads_dir / f"lacker-{run.id}-{kind}"
    if not target.with_suffix(".zip").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with _named_copy(folder, target.name) as staged:
            shutil.make_archive(str(target), "zip", root_dir=staged.parent, base_dir=staged.name)
    return target.with_suffix(".zip")


def save_folders(settings: Settings) -> list[Path]:
    """Where the studio may save a copy: its runs folder and the operator's folders."""
    return [settings.home, *settings.operator_dirs]


def save_model(run: Run, kind: str, destination: str, settings: Settings) -> Path:
    """Copy the model folder into `destination`, which must lie where the studio may write (the runs home or
    an operator's folder: Settings.check_writable_path); the copy's model card loads it from there.
    PathNotAllowed names the folders it may go to."""
    try:
        target = settings.check_writable_path(destination)
    except PathNotAllowed:
        allowed = " or ".join(f"`{folder}`" for folder in save_folders(settings))
        # The same words whether or not the folder exists: they say where a copy may go, nothing about the rest.
        raise PathNotAllowed(f"this studio may not save to `{destination}`. It saves only inside {allowed} "
                             "(never into its downloads folder or its own files): type a new folder there, for "
                             f"example `{settings.home / 'exports' / f'lacker-{run.id}-{kind}'}`.") from None
    folder = model_folder(run, kind)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{destination} exists and is not empty; pick a new folder name")
    shutil.copytree(folder, target, dirs_exist_ok=True)
    name_model_in_card(target, str(target))
    return target


def redact(text: str, token: str | None) -> str:
    for secret in {token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}:
        if secret:
            text = text.replace(secret, "hf_***")
    return text


NO_TOKEN = ("pushing needs a Hugging Face token with write access: paste one into the token box (make one at "
            "https://huggingface.co/settings/tokens), or ask whoever runs this studio to set the HF_TOKEN secret.")
TOKEN_REFUSED = ("the Hub refused the token: it is wrong, expired or has no write access to {repo_id}. Paste a "
                 "token with write access (https://huggingface.co/settings/tokens).")
HUB_UNREACHABLE = ("the Hugging Face Hub cannot be reached from the machine this studio runs on (no network, a "
                   "firewall, or the Hub is down). Try again later, or build the zip, download it and upload its "
                   "files on the Hub's website.")


def _unreachable(problem: BaseException) -> bool:
    """Whether the push failed for want of a connection, not because the Hub said no."""
    import httpx
    from huggingface_hub.errors import OfflineModeIsEnabled

    while problem is not None:
        if isinstance(problem, (httpx.TransportError, OfflineModeIsEnabled, ConnectionError, TimeoutError)):
            return True
        problem = problem.__cause__ or problem.__context__
    return False


def push_model(run: Run, kind: str, repo_id: str, token: str | None, private: bool) -> str:
    """Upload the model with the model card the run wrote (settings, before / after metrics), its usage
    snippet naming `repo_id`; returns the repo URL. The adapter's config names its base by hub id.
    RuntimeError says what to do: no token, a token the Hub refused, a Hub that cannot be reached."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = (repo_id or "").strip()
    if "/" not in repo_id:
        raise ValueError("repo id must look like your-name/model-name")
    folder = model_folder(run, kind)
    token = (token or "").strip() or None
    if token is None and not get_token():  # get_token: HF_TOKEN, else what `hf auth login` stored
        raise RuntimeError(NO_TOKEN)
    try:
        with _named_copy(folder, repo_id) as staged:
            if kind == "adapter":
                point_adapter_at_hub_base(staged, run.model)
            return push_folder(staged, repo_id, token=token, private=private)
    except Exception as problem:  # huggingface_hub raises many kinds; the user needs the words, without the token
        if _unreachable(problem):
            raise RuntimeError(HUB_UNREACHABLE) from None
        if isinstance(problem, HfHubHTTPError) and problem.response is not None and problem.response.status_code == 401:
            raise RuntimeError(TOKEN_REFUSED.format(repo_id=repo_id)) from None
        raise RuntimeError(redact(f"push to {repo_id} failed: {problem}", token)) from None


# (label, "format:quantization") for the Export tab; GGUF where llama.cpp takes the run's model (conversions_for)
CONVERSIONS = [("GGUF f16 (llama.cpp, Ollama)", "gguf:f16"), ("GGUF q8_0 (half the size)", "gguf:q8_0"),
               ("ONNX fp32 (onnxruntime)", "onnx:fp32"), ("ONNX int8 (smaller, faster on a CPU)", "onnx:int8")]
RUNTIME_MISSING = ("the llama.cpp runtime that checks a GGUF file could not be installed on the machine this studio "
                   "runs on (it comes from the npm registry and runs in node). Ask whoever runs this studio to install "
                   "node and npm there, or export to ONNX, which needs neither.")


@dataclass
class Conversion:
    """A finished GGUF or ONNX export of a run: what the parity check found, the file to download, and the lines
    that serve it."""

    report: dict  # parity.json
    download: Path  # in the downloads folder: the .gguf file, or the ONNX folder as a zip
    snippets: dict  # {"shell": ..., "python": ...}


def conversions_for(run: Run) -> tuple[list[tuple[str, str]], str]:
    """The formats the Export tab offers for the run, and "" or why GGUF is not among them: engine.export.gguf's
    `refusal` of the run's merged model (a classifier; a reranker llama.cpp cannot rank with, such as a BERT
    cross-encoder that reads the document as the second segment), the rule `export` itself refuses by, read from
    the model's files without loading it."""
    folder = Path(run.run_dir) / "merged"
    if not folder.is_dir():
        return CONVERSIONS, ""
    engine_stack()
    from engine.export import gguf

    refused = gguf.refusal(folder, run.task)
    if refused is None:
        return CONVERSIONS, ""
    return ([c for c in CONVERSIONS if c[1].startswith("onnx")],
            f"GGUF is not offered for this run: {refused}. {refused.fix[:1].upper()}{refused.fix[1:]}.")


def _download_name(run: Run, format: str, quantize: str) -> str:
    return f"lacker-{run.id}-{format}-{quantize}"


def convert(run: Run, choice: str, settings: Settings, progress=None) -> Conversion:
    """Export the run's merged model as `choice` ("gguf:q8_0", ...) into RUN/export/, check it (parity.json), and
    put it in the downloads folder. ValueError (engine.export.ExportError among them) says what went wrong in the
    page's words."""
    engine_stack()
    from engine.export import ExportError, export, llama_cpp

    format, _, quantize = choice.partition(":")
    model_folder(run, "merged")
    if format == "gguf":
        try:
            llama_cpp.install()  # once, seconds: the runtime the parity check embeds with
        except ExportError:
            raise ValueError(RUNTIME_MISSING) from None
    try:
        result = export(run.run_dir, format, quantize, conversion_folder(run, choice), progress=progress)
    except ExportError as problem:
        raise ValueError(f"{problem}: {problem.fix}") from None
    name = _download_name(run, format, quantize)
    settings.downloads_dir.mkdir(parents=True, exist_ok=True)
    if format == "gguf":
        download = settings.downloads_dir / f"{name}.gguf"
        shutil.copyfile(result.path, download)
    else:
        download = settings.downloads_dir / f"{name}.zip"
        with tempfile.TemporaryDirectory(prefix="lacker-export-") as staging:
            shutil.copytree(result.path, Path(staging) / name)
            archive = shutil.make_archive(str(Path(staging) / name), "zip", root_dir=staging, base_dir=name)
            shutil.move(archive, download)
    return Conversion(result.report, download, serving(run, result.path, served_name(run, choice)))


def serving(run: Run, exported: Path | None, shown_name: str = "") -> dict:
    """The lines that serve the run's export (`exported`, named `shown_name` as downloaded), or only its merged
    model (TEI) when there is no export yet."""
    from engine.export.serving import serving_snippets, tei_snippet

    merged = f"lacker-{run.id}-merged"
    if exported is None:
        return {"shell": tei_snippet(run.task, merged), "python": ""}
    return serving_snippets(run.task, exported, shown_name, merged)


def served_name(run: Run, choice: str) -> str:
    """What the user's copy of an export is called once downloaded (and unzipped)."""
    format, _, quantize = choice.partition(":")
    return _download_name(run, format, quantize) + (".gguf" if format == "gguf" else "")


def conversion_folder(run: Run, choice: str) -> Path:
    """Where the run's export as `choice` goes: RUN/export/FORMAT-QUANTIZATION (engine.export's default)."""
    return Path(run.run_dir) / "export" / choice.replace(":", "-")


def conversion_report(run: Run, choice: str) -> dict | None:
    """The parity.json of the run's export as `choice`, or None before there is one."""
    report = conversion_folder(run, choice) / "parity.json"
    return json.loads(report.read_text()) if report.is_file() else None


def done_conversions(run: Run) -> list[tuple[str, dict]]:
    """("format:quantization", parity.json) of the run's exports so far, in CONVERSIONS' order."""
    reports = [(choice, conversion_report(run, choice)) for _, choice in CONVERSIONS]
    return [(choice, report) for choice, report in reports if report is not None]


def exported_path(run: Run, choice: str) -> Path | None:
    """The run's export as `choice`, if it was made: the .gguf file or the ONNX folder."""
    folder = conversion_folder(run, choice)
    if choice.startswith("gguf"):
        return next(iter(sorted(folder.glob("*.gguf"))), None)
    return folder if (folder / "parity.json").is_file() else None


def _label(choice: str) -> str:
    return next(label for label, value in CONVERSIONS if value == choice).split(" (")[0]


def _measures(report: dict) -> tuple[str, str]:
    """(how close the file is to the model, the held-out metrics of both) in a few words."""
    if report.get("score_correlation") is not None:
        metrics = report["metrics"]
        return (f"score correlation {report['score_correlation']:.4f}, largest difference "
                f"{report['score_max_diff']:.4f}, same choice {report['agreement']:.0%}",
                ", ".join(f"{name} {value:.3f} → {metrics['exported'][name]:.3f}"
                          for name, value in metrics["pytorch"].items()))
    if report.get("cosine_min") is not None:
        retrieval = report["retrieval"]
        return (f"cosine min {report['cosine_min']:.4f} / mean {report['cosine_mean']:.4f}",
                f"NDCG@10 {retrieval['pytorch']['ndcg@10']:.3f} → {retrieval['exported']['ndcg@10']:.3f}")
    return "not measured: the file did not run", ""


def parity_markdown(choice: str, report: dict) -> str:
    """The parity check of one export, for the page: verdict, size, how close, the metrics of both, what differs."""
    closeness, metrics = _measures(report)
    verdict = "✅ parity passed" if report["passed"] else "❌ parity FAILED"
    lines = [f"**{_label(choice)}: {verdict}** ({report['size_bytes'] / 1e6:.1f} MB)",
             f"- {closeness} over {report['texts']} held-out texts from {report['texts_from']} "
             f"(threshold {report['threshold']})"]
    if metrics:
        lines.append(f"- held-out metrics, PyTorch → exported: {metrics}")
    lines += [f"- **what differs:** {problem}" for problem in report["problems"]]
    return "\n".join(lines)


def conversions_table(run: Run) -> str:
    """Every GGUF / ONNX export of the run so far: format, size, parity."""
    done = done_conversions(run)
    if not done:
        return "No GGUF or ONNX export of this run yet."
    rows = ["| Format | Size | Parity | Closeness | Held-out metrics (PyTorch → exported) |", "|---|---|---|---|---|"]
    for choice, report in done:
        closeness, metrics = _measures(report)
        rows.append(f"| {_label(choice)} | {report['size_bytes'] / 1e6:.1f} MB | "
                    f"{'passed' if report['passed'] else 'FAILED'} | {closeness} | {metrics} |")
    return "\n".join(rows)
