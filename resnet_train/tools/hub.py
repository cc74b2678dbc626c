"""resnet-export push_to=hf://USER/REPO: the export folder (its model card included) uploaded to
the Hugging Face Hub through huggingface_hub, after the export is written: a failed upload
(offline, no token, refused) is one line, and the export stays where it was written."""

from __future__ import annotations

from pathlib import Path

from resnet_train.errors import UserError, first_line

PREFIX = "hf://"


def repo_id(push_to: str) -> str:
    """hf://USER/REPO -> USER/REPO, with huggingface_hub importable; refused in one line before
    any work otherwise."""
    parts = str(push_to)[len(PREFIX) :].split("/") if str(push_to).startswith(PREFIX) else []
    if len(parts) != 2 or not all(parts):
        raise UserError(f"push_to must be hf://USER/REPO, a Hugging Face Hub model repository (got {push_to!r})")
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise UserError("push_to needs huggingface_hub: pip install 'resnet-train[hub]'") from None
    return "/".join(parts)


def push(folder: Path, push_to: str) -> str:
    """Creates the repository if needed and uploads the folder (hidden files left out); its URL."""
    from huggingface_hub import HfApi

    repo = repo_id(push_to)
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo, folder_path=str(folder), repo_type="model", ignore_patterns=[".*", "**/.*"],
            commit_message="resnet-export",
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 -- network, login and Hub refusals alike: one line, the export kept
        raise UserError(
            f"could not push {folder} to {push_to} ({first_line(e, 200)}): the export is kept there; "
            f"push it later with `hf upload {repo} {folder}` once online and logged in (`hf auth login`)"
        ) from None
    return f"https://huggingface.co/{repo}"
