"""The C++ runtime (cpp/): built here with CMake (cached in cpp/build/, incremental), then held to the
Python runtime: numpy's noise bit for bit, the manifest schema and target registry field by field, the
ByT5 token ids, and the same image for the same engine folder, prompt and seed (text-to-image and
ControlNet, on ov-cpu and ov-cpu-int8 engines of `tiny`); tampered folders refused with a clear message
and exit code 2; the C API driven from a C program.

Missing tools skip with one line naming them (CI installs them: .ci/run)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
import typing
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "cpp"
BUILD = Path(os.environ.get("PIXART_CPP_BUILD", SRC / "build"))
PROMPT = "a red circle above a blue square"


# -- build ---------------------------------------------------------------------------------------------------
def _missing_tools() -> str | None:
    if not shutil.which("cmake"):
        return "cmake (apt-get install cmake)"
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "a C++17 compiler (apt-get install g++)"
    return None


def _cached_source(build: Path) -> str | None:
    cache = build / "CMakeCache.txt"
    if not cache.exists():
        return None
    for line in cache.read_text(errors="replace").splitlines():
        if line.startswith("CMAKE_HOME_DIRECTORY:"):
            return line.split("=", 1)[1]
    return None


@functools.lru_cache(maxsize=None)
def _build() -> tuple[Path | None, str]:
    """Configure (once) and build cpp/ with -j2; (build folder, "") or (None, why). A lock keeps two test
    processes sharing this checkout from building into the same folder at once."""
    import fcntl

    missing = _missing_tools()
    if missing:
        return None, f"C++ runtime not built: {missing} is not installed"
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _cached_source(BUILD)
        if cached is not None and Path(cached).resolve() != SRC.resolve():  # a moved checkout: start again
            shutil.rmtree(BUILD / "CMakeFiles", ignore_errors=True)
            (BUILD / "CMakeCache.txt").unlink()
            cached = None
        if cached is None:
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            configure = subprocess.run(
                ["cmake", "-S", str(SRC), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release", *generator],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if configure.returncode != 0:
                (BUILD / "CMakeCache.txt").unlink(missing_ok=True)  # a failed configure is not cached
                raise AssertionError("cmake configure failed:\n" + configure.stdout[-3000:] + configure.stderr[-3000:])
        build = subprocess.run(["cmake", "--build", str(BUILD), "-j2"], capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, "cmake --build failed:\n" + build.stdout[-4000:] + build.stderr[-3000:]
    return BUILD, ""


@pytest.fixture(scope="module")
def build() -> Path:
    folder, why = _build()
    if folder is None:
        pytest.skip(why)
    return folder


def tool(build: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(build / "pixart_tool"), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def openvino_build(build: Path) -> Path:
    if "openvino" not in tool(build, "backends").stdout.split():
        pytest.skip("C++ OpenVINO backend not built: pip install 'pixart-export[openvino]' into .venv; rebuild cpp/")
    return build


# -- engines: the shared tiny ov-cpu and ov-cpu-int8 engines, with and without tiny's ControlNet -----------
@functools.lru_cache(maxsize=None)
def _engines() -> dict[str, Path]:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    # the same module (and so the same cached engines) as the openvino tests import
    from tests._openvino_engine import controlnet_engine, int8_controlnet_engine, int8_engine, ov_engine

    return {
        "ov-cpu": ov_engine()[0],
        "ov-cpu-int8": int8_engine()[0],
        "ov-cpu-controlnet": controlnet_engine(),
        "ov-cpu-int8-controlnet": int8_controlnet_engine()[0],  # built once, shared with the openvino tests
    }


@pytest.fixture(scope="module")
def engines(openvino_build) -> dict[str, Path]:
    return _engines()


# -- noise ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 + 5, 2**64 - 1])
def test_noise_equals_numpy_bit_for_bit(build, tmp_path, seed):
    count = 1_000_000
    tool(build, "noise", seed, count, tmp_path / "noise.f32")
    ours = np.fromfile(tmp_path / "noise.f32", np.float32)
    numpy_draws = np.random.default_rng(seed).standard_normal(count, dtype=np.float32)
    diff = np.flatnonzero(ours.view(np.uint32) != numpy_draws.view(np.uint32))
    assert ours.size == count and diff.size == 0, f"{diff.size} draws differ, first at {diff[:5]}"


def test_noise_is_the_runtimes_draw_noise(build, tmp_path):
    """The runtime's [K, B, C, h, w] noise: image b is one stream of K*C*h*w draws of its own seed, in C
    order, as the C++ engine slices it (seeds 7 and 8 for --seed 7 --num-images 2)."""
    from pixart_export.runtime.noise import draw_noise

    expected = draw_noise(7, 2, (4, 16, 16), 4)
    for b in range(2):
        tool(build, "noise", 7 + b, expected[:, b].size, tmp_path / "noise.f32")
        own = np.fromfile(tmp_path / "noise.f32", np.float32).reshape(expected[:, b].shape)
        assert np.array_equal(own, expected[:, b])


# -- the manifest rules --------------------------------------------------------------------------------------
def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return "|".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{_describe(args[0])}]"
        return "tuple[" + ",".join(_describe(a) for a in args) + "]"
    if origin is dict:
        return f"map[{_describe(typing.get_args(tp)[1])}]"
    return "none" if tp is type(None) else tp.__name__


def test_schema_is_the_python_dataclasses(build):
    from pixart_export import manifest as m

    classes = (m.TensorRecord, m.GraphRecord, m.BackendInfo, m.Device, m.ModelRecord, m.LcmRecord)
    classes += (m.TokenizerRecord, m.Parity, m.FileEntry, m.Manifest)
    lines = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            lines.append(f"{cls.__name__} {f.name} {_describe(hints[f.name])} {'required' if required else 'optional'}")
    assert tool(build, "schema").stdout.splitlines() == lines
    assert [p.value for p in m.Precision] == ["fp32", "fp16", "bf16", "int8", "int8-weights", "fp8"]


def test_target_registry_is_pythons(build):
    from pixart_export.targets import TARGETS

    expected = [f"{n} {t.backend.name} {','.join(t.backend.statuses)}" for n, t in TARGETS.items()]
    assert tool(build, "targets").stdout.splitlines() == expected


# -- tokenizer -----------------------------------------------------------------------------------------------
PROMPTS = [
    PROMPT,
    "A",
    "naïve café — “quotes” and ünïcödé",
    "東京の夜景、ネオン",
    "emoji 🐱‍👤 and flags 🇫🇷 ",
    "combining e\u0301 and zero\u200bwidth",
    "special tokens inside: </s> <pad> <unk> <extra_id_0><extra_id_99> <extra_id_ 5>",
    "</s></s>",
    "tab\tnewline\nend",
    "x" * 119,
    "y" * 120,
    "an over-long prompt " * 20,
    "ü" * 80,  # 160 bytes: truncation inside the UTF-8 bytes
]


def test_token_ids_equal_python(openvino_build, engines, tmp_path):
    from pixart_export.manifest import read_manifest
    from pixart_export.runtime.tokenizer import load_tokenizer

    folder = engines["ov-cpu"]
    tokenizer = load_tokenizer(folder, read_manifest(folder).tokenizer)
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS), encoding="utf-8")
    out = tool(openvino_build, "tokenize", folder, tmp_path / "prompts.json").stdout.splitlines()
    ids, _ = tokenizer(PROMPTS)
    assert [json.loads(line) for line in out] == ids.tolist()


# -- images: C++ == Python -----------------------------------------------------------------------------------
def _control_image():
    from PIL import Image

    rng = np.random.default_rng(3)
    return Image.fromarray((rng.random((128, 128, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    "target, mode",
    [
        ("ov-cpu", "text-to-image"),
        ("ov-cpu", "two images"),
        ("ov-cpu-int8", "text-to-image"),
        ("ov-cpu-controlnet", "controlnet"),
        ("ov-cpu-int8-controlnet", "controlnet"),
    ],
)
def test_image_equals_python(openvino_build, engines, tmp_path, target, mode):
    from PIL import Image

    from pixart_export import runtime

    folder = engines[target]
    pipe = runtime.load(folder)
    cmd = [str(openvino_build / "pixart_run"), str(folder), "--prompt", PROMPT, "--seed", "5"]
    kwargs = {}
    if mode == "controlnet":
        control = _control_image()
        control.save(tmp_path / "control.ppm")
        cmd += ["--control", str(tmp_path / "control.ppm"), "--scale", "0.8"]
        kwargs = {"control_image": control, "conditioning_scale": 0.8}
    if mode == "two images":  # one batch of 2: image b's x_T and step noise from seed 5 + b alone
        cmd += ["--num-images", "2"]
        kwargs = {"seeds": [5, 6]}
    python = np.stack([np.asarray(im, dtype=np.int16) for im in pipe(PROMPT, seed=5, **kwargs)])
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "cpp.png")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = ["cpp.png", "cpp_1.png"][: len(python)]
    cpp = np.stack([np.asarray(Image.open(tmp_path / n).convert("RGB"), dtype=np.int16) for n in names])
    assert cpp.shape == python.shape
    diff = int(np.abs(cpp - python).max())
    print(f"{target} {mode}: max |C++ - Python| = {diff} uint8 levels")
    assert diff <= 1, f"{target} {mode}: C++ and Python images differ by up to {diff} uint8 levels"
    assert python.std() > 1  # a real image, not a constant


# -- tampered folders ----------------------------------------------------------------------------------------
def _tamper_hash(folder: Path) -> str:
    path = folder / "text_encoder.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return "sha256 differs from the manifest"


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def _tamper_path(folder: Path) -> str:
    def edit(data):
        data["graphs"][0]["file"] = "../outside.xml"

    _edit_manifest(folder, edit)
    return "not a plain relative path inside the folder"


def _tamper_backend(folder: Path) -> str:
    def edit(data):
        data["backend"]["name"] = "onnxruntime"

    _edit_manifest(folder, edit)
    return "runs on openvino, but the manifest says backend 'onnxruntime'"


def _tamper_symlink(folder: Path) -> str:
    outside = folder.parent / "outside-text_encoder.bin"
    shutil.copyfile(folder / "text_encoder.bin", outside)
    (folder / "text_encoder.bin").unlink()
    (folder / "text_encoder.bin").symlink_to(outside)
    return "a symbolic link; an engine folder holds its own files"


def _tamper_extra(folder: Path) -> str:
    (folder / "extra.bin").write_bytes(b"x")
    return "files not in the manifest: extra.bin"


def _tamper_schema(folder: Path) -> str:
    def edit(data):
        data["graphs"][1]["precision"] = "int9"

    _edit_manifest(folder, edit)
    return "graphs[1].precision: 'int9' is not one of fp32"


@pytest.mark.parametrize(
    "tamper", [_tamper_hash, _tamper_path, _tamper_backend, _tamper_symlink, _tamper_extra, _tamper_schema]
)
def test_refuses_tampered_folder(openvino_build, engines, tmp_path, tamper):
    from pixart_export import runtime
    from pixart_export.manifest import EngineError

    folder = tmp_path / "engine"
    shutil.copytree(engines["ov-cpu"], folder)
    assert tool(openvino_build, "validate", folder).stdout.startswith("ok ov-cpu")
    message = tamper(folder)
    proc = subprocess.run(
        [str(openvino_build / "pixart_run"), str(folder), "--prompt", PROMPT, "--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(EngineError):  # the Python loader refuses the same folders
        runtime.load(folder)


def test_pixart_run_usage(build):
    proc = subprocess.run([str(build / "pixart_run")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage: pixart_run ENGINE_DIR --prompt" in proc.stderr


# -- C API ---------------------------------------------------------------------------------------------------
def test_c_api_from_c(openvino_build, engines, tmp_path):
    from PIL import Image

    proc = subprocess.run(
        [str(openvino_build / "c_api_test"), str(engines["ov-cpu"]), str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok generate 128x128" in proc.stdout
    assert Image.open(tmp_path / "c.png").size == (128, 128)


SEEDS_VIA_C_API = textwrap.dedent("""
    import ctypes, sys
    import numpy as np
    class Image(ctypes.Structure):
        _fields_ = [("width", ctypes.c_int), ("height", ctypes.c_int), ("rgb", ctypes.POINTER(ctypes.c_uint8))]
    lib = ctypes.CDLL(sys.argv[1])
    lib.pixart_last_error.restype = ctypes.c_char_p
    lib.pixart_generate_seeds.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64),
                                          ctypes.c_int, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p]
    engine = ctypes.c_void_p()
    assert lib.pixart_open(sys.argv[2].encode(), ctypes.byref(engine)) == 0, lib.pixart_last_error()
    seeds = [int(s) for s in sys.argv[4].split(",")]
    images = ctypes.POINTER(Image)()
    rc = lib.pixart_generate_seeds(engine, sys.argv[3].encode(), (ctypes.c_uint64 * len(seeds))(*seeds), len(seeds),
                                   None, ctypes.c_float(1.0), ctypes.byref(images))
    assert rc == 0, lib.pixart_last_error()
    shape = (images[0].height, images[0].width, 3)
    out = [np.ctypeslib.as_array(images[i].rgb, shape).copy() for i in range(len(seeds))]
    np.save(sys.argv[5], np.stack(out))
    lib.pixart_images_free(images, len(seeds))
    lib.pixart_close(engine)
""")


def test_c_api_seeds_one_image_per_seed(openvino_build, engines, tmp_path):
    """pixart_generate_seeds: image i from seeds[i] alone, as Python's `seeds=[...]` (0 levels apart)."""
    from pixart_export import runtime

    folder = engines["ov-cpu"]
    lib = openvino_build / "libpixart_runtime.so"
    args = [sys.executable, "-c", SEEDS_VIA_C_API, str(lib), str(folder), PROMPT, "6,5", str(tmp_path / "c.npy")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cpp = np.load(tmp_path / "c.npy")
    python = np.stack([np.asarray(im) for im in runtime.load(folder)(PROMPT, seeds=[6, 5])])
    assert cpp.shape == python.shape and np.array_equal(cpp, python)
    assert not np.array_equal(cpp[0], cpp[1])


REWRITE_VIA_C_API = textwrap.dedent("""
    import ctypes, pathlib, sys, time
    lib = ctypes.CDLL(sys.argv[1])
    lib.pixart_last_error.restype = ctypes.c_char_p
    lib.pixart_generate_seeds.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64),
                                          ctypes.c_int, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p]
    engine = ctypes.c_void_p()
    assert lib.pixart_open(sys.argv[2].encode(), ctypes.byref(engine)) == 0, lib.pixart_last_error()
    def generate():
        images = ctypes.c_void_p()
        seeds = (ctypes.c_uint64 * 1)(1)
        rc = lib.pixart_generate_seeds(engine, b"a red circle", seeds, 1, None, ctypes.c_float(1), ctypes.byref(images))
        if rc == 0:
            lib.pixart_images_free(images, 1)
        return rc
    assert generate() == 0, lib.pixart_last_error()
    time.sleep(0.05)  # past the file system's timestamp tick
    weights = pathlib.Path(sys.argv[3])
    weights.write_bytes(weights.read_bytes())  # the same bytes, written in place
    assert generate() != 0
    print(lib.pixart_last_error().decode())
    lib.pixart_close(engine)
""")


def test_c_api_refuses_weights_rewritten_after_the_compile(openvino_build, engines, tmp_path):
    """The C++ OpenVINO backend maps the weights (mapped.hpp): a weights file written after the check, even
    with the same bytes, is refused before the next run, as in Python."""
    folder = shutil.copytree(engines["ov-cpu"], tmp_path / "ov")
    manifest = json.loads((folder / "manifest.json").read_text())
    xml = next(g["file"] for g in manifest["graphs"] if g["graph"] == "vae_decoder")
    weights = folder / xml.replace(".xml", ".bin")
    lib = openvino_build / "libpixart_runtime.so"
    proc = subprocess.run(
        [sys.executable, "-c", REWRITE_VIA_C_API, str(lib), str(folder), str(weights)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{weights.name}: changed after the folder was checked" in proc.stdout, proc.stdout


# -- TensorRT (GPU hosts only; not run in CI, never run so far: no host with TensorRT was available) -------
@pytest.mark.gpu
def test_tensorrt_image_equals_python(tmp_path):
    """Compile the tiny trt-t4 bundle on this GPU, build cpp/ with the TensorRT backend, and compare the
    C++ image with the Python runtime's (same engines, same runner rules)."""
    from PIL import Image

    from pixart_export import runtime
    from pixart_export.backends.tensorrt.compile import compile_bundle, host_can_compile
    from pixart_export.targets import TARGETS

    ok, why = host_can_compile(TARGETS["trt-t4"])
    if not ok:
        pytest.skip(why)
    missing = _missing_tools()
    if missing:
        pytest.skip(f"C++ runtime not built: {missing} is not installed")
    build = BUILD / "tensorrt"  # inside the ignored build folder
    configure = subprocess.run(
        ["cmake", "-S", str(SRC), "-B", str(build), "-DPIXART_WITH_TENSORRT=ON", "-DPIXART_WITH_OPENVINO=OFF"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if configure.returncode != 0:
        pytest.skip("TensorRT C++ headers/libraries or the CUDA toolkit not found (set TENSORRT_ROOT)")
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True, timeout=1200)
    sys.path.insert(0, str(Path(__file__).parent))
    from test_tensorrt_bundle import tiny_bundle

    src, _ = tiny_bundle()
    folder = shutil.copytree(src, tmp_path / "b")
    compile_bundle(folder, TARGETS["trt-t4"], log=print)
    python = np.asarray(runtime.load(folder)(PROMPT, seed=0)[0], dtype=np.int16)
    proc = subprocess.run(
        [str(build / "pixart_run"), str(folder), "--prompt", PROMPT, "--seed", "0", "--out", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    cpp = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"), dtype=np.int16)
    diff = int(np.abs(cpp - python).max())
    print(f"trt-t4 text-to-image: max |C++ - Python| = {diff} uint8 levels")
    assert diff <= 1


def test_sha256_equals_hashlib(build, tmp_path):
    import hashlib

    rng = np.random.default_rng(0)
    files = []
    for size in (0, 1, 55, 56, 63, 64, 65, 1000, 3 * 2**20 + 7):  # the padding edges, and several read blocks
        path = tmp_path / f"f{size}"
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        files.append(path)
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert tool(build, "sha256", *files).stdout.split() == expected  # OpenSSL's where the build found it
    assert tool(build, "sha256", "--builtin", *files).stdout.split() == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"schema_version": 2,}', "not readable JSON"),
        ('{"schema_version": 1}', "schema version 1, this pixart-export reads 2"),
        ("[1, 2]", "not a JSON object"),
        ('{"schema_version": 2}', ": missing; rebuild the engine"),
    ],
)
def test_refuses_bad_manifest_json(build, tmp_path, text, message):
    from pixart_export.manifest import EngineError, read_manifest

    (tmp_path / "manifest.json").write_text(text)
    proc = tool(build, "validate", tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    with pytest.raises(EngineError, match=message.replace("(", r"\(")):
        read_manifest(tmp_path)
