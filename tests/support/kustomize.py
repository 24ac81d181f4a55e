"""deploy/k8s rendered as Kubernetes would get it: ``kustomize build`` or ``kubectl kustomize``
when either is on PATH; otherwise the documents of each kustomization's ``resources`` read
directly, applying the only transformations our kustomizations use (``namespace``, ``images``,
and ``patches`` that merge maps, merge a pod's named lists by name, replace other lists and
delete on null). tests/ops/test_manifests.py checks that the fallback renders what the tool does.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

__all__ = ["K8S", "documents", "render", "render_directly", "render_with_tool", "tool"]

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
NAMED_LISTS = frozenset({"containers", "initContainers", "env", "volumes", "volumeMounts"})


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def tool() -> list[str] | None:
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    return None


def render_with_tool(path: Path) -> list[dict[str, Any]]:
    found = tool()
    assert found is not None
    done = subprocess.run(
        [*found, str(path)], capture_output=True, text=True, timeout=120, check=True
    )
    return documents(done.stdout)


def _set_images(doc: dict[str, Any], images: list[dict[str, str]]) -> None:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("containers", []):
        name = re.split(r"[:@]", container["image"], maxsplit=1)[0]
        for image in images:
            if image["name"] == name:
                new_name = image.get("newName", name)
                container["image"] = (
                    f"{new_name}:{image['newTag']}" if "newTag" in image else new_name
                )


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> None:
    """A strategic merge patch as kustomize applies it to these objects: maps merge, a null
    deletes, a pod's named lists (NAMED_LISTS) merge by name, and other lists are replaced (a
    CRD's lists have no merge keys; ours patch no others)."""
    for name, value in patch.items():
        if value is None:
            base.pop(name, None)
        elif isinstance(value, dict) and isinstance(base.get(name), dict):
            _merge(base[name], value)
        elif name in NAMED_LISTS and isinstance(base.get(name), list):
            base[name] = _merge_named(base[name], value)
        else:
            base[name] = value


def _merge_named(base: list[dict[str, Any]], patch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """kustomize's order: the patch's items first (merged into the base's of the same name),
    then the base's items that the patch does not name."""
    by_name = {item["name"]: item for item in base}
    merged = []
    for item in patch:
        target = json.loads(json.dumps(by_name.get(item["name"], {})))
        _merge(target, item)
        merged.append(target)
    named = {item["name"] for item in patch}
    return merged + [item for item in base if item["name"] not in named]


def _apply_patch(docs: list[dict[str, Any]], patch: dict[str, Any]) -> None:
    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return (doc["kind"], doc["metadata"]["name"])

    [target] = [doc for doc in docs if key(doc) == key(patch)]
    _merge(target, patch)


def render_directly(path: Path) -> list[dict[str, Any]]:
    """The fallback renderer: exactly the kustomize features deploy/ uses, and no others."""
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
    unsupported = set(kustomization) - known
    assert not unsupported, f"the fallback renderer does not implement {unsupported}"
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        target = (path / resource).resolve()
        docs += render_directly(target) if target.is_dir() else documents(target.read_text())
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"the fallback renderer does not implement {patch}"
        for document in documents((path / patch["path"]).read_text()):
            _apply_patch(docs, document)
    for doc in docs:
        if "namespace" in kustomization and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kustomization["namespace"]
        _set_images(doc, kustomization.get("images", []))
    return docs


def render(target: str) -> list[dict[str, Any]]:
    path = K8S / target
    return render_with_tool(path) if tool() else render_directly(path)
