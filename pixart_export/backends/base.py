"""The `Backend` protocol: what every folder under `pixart_export/backends/` provides, and nothing else.

A backend turns the exported fp32 ONNX graphs into what it runs, and runs them:

- `stages(ctx)`: its build stages after the export (quantise, convert, compile), each a named
  `Stage`; they put the files that ship into `ctx.staging` and their records into `ctx.records`;
- `verify(ctx)`: the parity section of the manifest (usually `verify.measure` with its runner);
- `runner(folder, manifest)`: a `GraphRunner` for the runtime (`runtime.Pipeline` drives it);
- `add_options(parser)` / `options(target, args)`: its `build` option group and the parsed options
  (JSON-able: they enter the build key);
- `code`: the repository files and folders whose content decides its artifacts (the build key
  hashes them, so editing any of them rebuilds);
- `check_host(manifest)`: refuse, with a message that says what to do, a folder this host cannot run.

Adding a backend = one folder with these parts and one row in `targets.py`. Nothing outside a
backend folder names a backend in an `if`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    import numpy as np

    from ..manifest import BackendInfo, Device, GraphRecord, Manifest, Parity


class GraphRunner(Protocol):
    """Runs one graph file of an engine folder (a session, a compiled model or an engine per file)."""

    def run(self, record: GraphRecord, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs of the graph file `record` on `feeds`; what runs it is loaded here, on first use."""

    def release(self, graph_names) -> None:
        """Drop what `run` loaded for the graphs named (manifest graph names, e.g. "text_encoder"): sessions,
        compiled models, engines. A graph released loads again on its next run (`Pipeline(low_memory=True)`)."""


@dataclass(frozen=True)
class Stage:
    """One named step of a build; `build.py` numbers them and prints their names."""

    name: str
    run: Callable[[object], None]


class Backend(Protocol):
    name: str  # the runtime package, as the manifest records it: "onnxruntime" | "openvino" | "tensorrt"
    extra: str  # the pip extra that installs it
    statuses: tuple[str, ...]  # manifest statuses a folder of this backend may have
    code: tuple[str, ...]  # repository paths (files or folders) that enter its build key
    runtime_settings: dict  # what a graph record's `runtime` may hold (targets.check_runtime_settings)

    def installed_version(self) -> str:
        """The installed runtime's version; EngineError naming the pip extra when it is missing."""

    def versions(self) -> dict[str, str]:
        """Versions of the tools its build uses (enter the build key and the manifest)."""

    def backend_info(self, target, versions: dict[str, str]) -> BackendInfo:
        """The manifest's `backend` section for a folder built with `versions`."""

    def check_request(self, ctx) -> None:
        """UserError for a build request this backend cannot serve (after the model is loaded)."""

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """Its option group of `pixart-export build`."""

    def options(self, target, args: argparse.Namespace | None) -> dict:
        """Its build options from parsed arguments (defaults when `args` is None); JSON-able."""

    def device(self, target) -> Device:
        """The device record of a folder built for `target` on this host."""

    def stages(self, ctx) -> list[Stage]:
        """Its build stages after the fp32 export."""

    def verify(self, ctx) -> Parity:
        """The parity section of the manifest (figures against the reference)."""

    def runner(self, folder: Path, manifest: Manifest, **kwargs) -> GraphRunner:
        """A runner of the folder's graphs for `runtime.Pipeline`."""

    def check_host(self, folder: Path, manifest: Manifest) -> None:
        """EngineError when this host cannot run the folder (version, device)."""

    def finish(self, target, folder: Path, manifest: Manifest, log: Callable[[str], None]) -> Manifest:
        """After install: anything that must run on the installed folder (TensorRT compiles here)."""


class BackendBase:
    """The build-side half of `Backend`, forwarded to the backend's own modules, imported on first use
    (so the registry and `--help` import no backend library): `options.add_options(parser)`,
    `options.options_from_args(backend, target, args)`, and in `prepare`: `stages(backend, ctx)`,
    `verify(backend, ctx)`, `remeasure(backend, folder, manifest, model, log)`, and where a backend has
    them `check_request(backend, ctx)` and `finish(backend, target, folder, manifest, log)`."""

    package: str  # the backend's package, e.g. "pixart_export.backends.onnxruntime"
    #: converts a text encoder too large for the fp32 export straight from its weights
    #: (`export/t5_direct.py`; the exporter then writes no `text_encoder` ONNX)
    direct_text_encoder: bool = False

    def _module(self, name: str):
        import importlib

        return importlib.import_module(f"{self.package}.{name}")

    def add_options(self, parser) -> None:
        self._module("options").add_options(parser)

    def options(self, target, args) -> dict:
        return self._module("options").options_from_args(self, target, args)

    def check_request(self, ctx) -> None:
        check = getattr(self._module("prepare"), "check_request", None)
        if check is not None:
            check(self, ctx)

    def stages(self, ctx) -> list[Stage]:
        return self._module("prepare").stages(self, ctx)

    def verify(self, ctx) -> Parity:
        return self._module("prepare").verify(self, ctx)

    def remeasure(self, folder: Path, manifest: Manifest, model, log) -> Parity:
        return self._module("prepare").remeasure(self, folder, manifest, model, log)

    def finish(self, target, folder: Path, manifest: Manifest, log) -> Manifest:
        finish = getattr(self._module("prepare"), "finish", None)
        return manifest if finish is None else finish(self, target, folder, manifest, log)


def dist_version(dist: str, install_hint: str) -> str:
    """The installed version of the distribution `dist`; EngineError with `install_hint` when missing."""
    import importlib.metadata

    from ..manifest import EngineError

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise EngineError(install_hint) from None


def flag(parser, group: str, name: str, help: str) -> None:
    """A backend's `build` option group holding one on/off flag."""
    parser.add_argument_group(group).add_argument(name, action="store_true", help=help)
