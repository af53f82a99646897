"""``fastgshare build``: a stack file read from disk, and each function's image registered as its
handler folder through the provider (``PUT /system/fastgshare/images``), by path when the
provider's machine holds the same folder, else uploaded as an archive. Used by the CLI and the
demo; talks to the platform only through ``fastgshare.provider_client``."""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastgshare.handler_archive import ArchiveError, folder_digest, pack
from fastgshare.provider_client import ProviderClient
from fastgshare.stack import StackFunction, parse_stack

_NOT_HERE = ("handlerDir:", "codeDigest:", "templateDir:")
"""How a refused registration starts when the provider lacks the named folder (or holds other
content there): then the folder is sent instead."""


class BuildError(SystemExit):
    """A stack or registration the CLI cannot go on with (its message is the exit text)."""


def load_stack(path: Path) -> tuple[Any, list[StackFunction]]:
    """The parsed YAML and its functions (handler paths taken from the file's folder)."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    return doc, parse_stack(doc, path.resolve().parent)


def upload_body(common: dict[str, Any], handler_dir: Path, template_dir: Path) -> dict[str, Any]:
    """A registration that sends the handler folder (and a local template) as archives."""
    out = {**common, "archive": base64.b64encode(pack(handler_dir)).decode()}
    if template_dir.is_dir():
        out["templateArchive"] = base64.b64encode(pack(template_dir)).decode()
    return out


def register_image(client: ProviderClient, body: dict[str, Any], *,
                   upload: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Local mode's build: the provider maps ``body['image']`` to a handler folder. When the
    provider does not have the folder named in ``body`` (another machine, or other content
    there), ``upload()`` (the same with the folders as archives) is sent instead."""
    resp = client.register_image(body)
    if resp.status_code == 400 and upload is not None and resp.text.startswith(_NOT_HERE):
        resp = client.register_image(upload())
    if resp.status_code == 404:
        raise BuildError(
            f"build {body['image']}: {client.url} does not serve /system/fastgshare/images (an OpenFaaS "
            "gateway in front of the provider does not forward it): pass the provider's own URL "
            "as --gateway, or run `fastgshare build` where `fastgshare up` runs")
    if resp.status_code >= 300:
        raise client.refused(f"build {body['image']}", resp)
    return dict(resp.json())


def register_stack(client: ProviderClient, stack_path: Path) -> list[str]:
    """Register each function's image of the stack file; a provider that runs real images
    (Kubernetes) needs none: then nothing is registered. The images registered."""
    _, functions = load_stack(stack_path)
    orchestration = client.orchestration()
    if orchestration and orchestration != "local":
        print(f"the provider at {client.url} runs container images ({orchestration}): nothing to "
              "register; build and push them with faas-cli")
        return []
    done = []
    for fn in functions:
        if not (fn.handler_dir / "handler.py").is_file():
            raise BuildError(f"{fn.name}: handler folder {fn.handler_dir} has no handler.py")
        lang = fn.lang or "python3-torch"
        local_template = stack_path.resolve().parent / "template" / lang
        try:
            digest = folder_digest(fn.handler_dir)
        except ArchiveError as e:
            raise BuildError(f"{fn.name}: {e}") from e
        common: dict[str, Any] = {"image": fn.image, "lang": lang, "codeDigest": digest}
        body = {**common, "handlerDir": str(fn.handler_dir.resolve())}
        if local_template.is_dir():
            body["templateDir"] = str(local_template)
        register_image(client, body, upload=functools.partial(upload_body, common, fn.handler_dir,
                                                              local_template))
        done.append(fn.image)
    return done
