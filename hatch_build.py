"""Build hook: compiles the worker's native entry recogniser (src/metricrelay/_entryscan.c).

The extension is one C file with no dependency but Python's headers, so it is compiled with the
interpreter's own compiler settings (sysconfig) instead of pulling in a build system. Without a C
compiler the package still installs and works: wholeentry.py falls back to its msgspec pass
(slower on the hot path, same judgement), and says so in a warning at build time.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import (  # type: ignore[import-not-found]
    BuildHookInterface,  # only in the build environment
)

SOURCE = Path("src/metricrelay/_entryscan.c")


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        target = SOURCE.with_name("_entryscan" + sysconfig.get_config_var("EXT_SUFFIX"))
        compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
        command = [
            *compiler,
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-I",
            sysconfig.get_paths()["include"],
            str(root / SOURCE),
            "-o",
            str(root / target),
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", "") or str(error)
            print(f"metricrelay: the native recogniser was not built: {detail}", file=sys.stderr)
            return
        build_data["artifacts"].append(target.as_posix())
        if version != "editable":
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
