"""The import rules of ARCHITECTURE.md, read from the source: which package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "metricrelay"
PACKAGES = (
    "aiapi",
    "api",
    "commands",
    "devtools",
    "integrations",
    "ops",
    "producer",
    "relay",
    "viewer",
)
# What each part may import besides itself; "core" is the top-level modules of metricrelay.
ALLOWED = {
    "core": {"core"},
    "aiapi": {"core"},
    "relay": {"core"},
    "producer": {"core", "aiapi"},
    "integrations": {"core", "producer"},  # framework hooks on the Emitter
    "api": {"core", "aiapi"},
    "ops": {"core", "relay"},
    "devtools": {"core", "aiapi", "relay", "producer"},
    "viewer": {"core", "aiapi", "relay"},
    "commands": {"core", "aiapi", "relay", "producer", "api", "ops", "devtools", "viewer"},
    "entry": {"core", "aiapi", "relay", "producer", "ops", "devtools", "commands"},
}
# The reference server is imported by nothing outside api/ but the command that serves it.
API_IMPORTERS = {"metricrelay.commands.api"}
ENTRY = {"__init__", "__main__", "cli"}  # the public re-exports and the command line


def part_of(module: str) -> str:
    """``metricrelay.relay.worker`` → ``relay``; a top-level module → ``core`` (or ``entry``)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in PACKAGES:
        return parts[1]
    if len(parts) == 1 or parts[1] in ENTRY:
        return "entry"
    return "core"


def imports_of(path: Path) -> set[str]:
    """Every metricrelay module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("metricrelay")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "metricrelay":  # from metricrelay import timestamps
                found |= {f"metricrelay.{a.name}" for a in node.names}
            elif node.module.startswith("metricrelay."):
                found.add(node.module)
    return found


def module_name(path: Path) -> str:
    relative = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(relative.parts)


def test_every_import_follows_the_rules() -> None:
    broken = []
    for path in sorted(SRC.rglob("*.py")):
        importer = module_name(path)
        for imported in sorted(imports_of(path)):
            if part_of(imported) == "entry" and imported != "metricrelay":
                target = "entry"
            else:
                target = part_of(imported)
            mine = part_of(importer)
            if target == mine:
                continue
            if target not in ALLOWED[mine] or (target == "api" and importer not in API_IMPORTERS):
                broken.append(f"{importer} ({mine}) imports {imported} ({target})")
    assert not broken, "\n".join(broken)


def test_the_rules_see_every_package_and_catch_a_breach() -> None:
    on_disk = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert on_disk == set(PACKAGES)
    assert part_of("metricrelay.relay.worker") == "relay"
    assert part_of("metricrelay.keys") == "core"
    assert "devtools" not in ALLOWED["relay"]  # the daemon never imports the rigs
    assert "api" not in ALLOWED["producer"]  # the ingest shares aiapi/, not the reference server


def test_the_viewer_takes_only_the_token_providers_from_the_relay() -> None:
    """``metricrelay view`` reuses the worker's credentials, not the daemon (ARCHITECTURE.md)."""
    relay = {
        imported
        for path in (SRC / "viewer").rglob("*.py")
        for imported in imports_of(path)
        if part_of(imported) == "relay"
    }
    assert relay == {"metricrelay.relay.auth"}
