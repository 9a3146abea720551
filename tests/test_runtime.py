"""pixart_export.runtime: torch-free, same noise and tokens as the reference, refuses bad engine folders."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pixart_export import runtime
from pixart_export.manifest import EngineError
from pixart_export.metrics import psnr_uint8
from pixart_export.runtime.noise import draw_noise as runtime_noise
from pixart_export.runtime.tokenizer import ByT5Tokenizer
from tests._tiny_engine import copy_engine, engine, model  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent

BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = ("torch", "diffusers", "reference", "transformers", "onnx", "nncf")
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
""")


def test_noise_matches_reference():
    from reference.schedules import draw_noise

    for args in [
        (0, 1, (4, 16, 16), 4),
        (123, 3, (4, 8, 12), 2),
        (7, 2, (4, 4, 4), 1),
        ([9, 2**63 - 1], 2, (4, 4, 4), 4),
    ]:
        a, b = runtime_noise(*args), draw_noise(*args)
        assert a.dtype == b.dtype == np.float32
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "text",
    [
        "a small red circle above a blue square",
        "",
        "x" * 300,
        "ein Haus am See, Öl auf Leinwand ✓ 漢字",
        "tags</s>in<pad>the<unk>text<extra_id_7>!",
        "<extra_id_124><extra_id_12>",
        "a <s> b",
    ],
)
def test_byt5_tokenizer_matches_transformers(text):
    from transformers import AutoTokenizer

    from reference.loading import TINY_DIR
    from reference.text import tokenize

    want_ids, want_mask = tokenize(AutoTokenizer.from_pretrained(str(TINY_DIR / "tokenizer")), [text, "short"])
    ids, mask = ByT5Tokenizer.from_folder(TINY_DIR / "tokenizer", 120)([text, "short"])
    assert np.array_equal(ids, want_ids.numpy()) and np.array_equal(mask, want_mask.numpy())


def test_runs_without_torch_and_matches_reference(engine, model, tmp_path):  # noqa: F811
    """Import and run the runtime (and `pixart-export run`) where importing torch raises."""
    folder, _ = engine
    script = BLOCKER + textwrap.dedent(f"""
        import numpy as np
        from pixart_export import runtime
        pipe = runtime.load({str(folder)!r})
        images = pipe("a small red circle above a blue square", seed=3, num_images=2, output="np")
        np.save({str(tmp_path / "x.npy")!r}, images)
        # the runtime loads nothing of the export, quantise, compile or verify stages
        stages = ("pixart_export.export", "pixart_export.build", "pixart_export.calibration", "pixart_export.verify",
                  "pixart_export.backends.onnxruntime.prepare", "pixart_export.backends.onnxruntime.optimize")
        print("STAGES", sorted(m for m in sys.modules if m.startswith(stages)))
        from pixart_export.cli import main
        assert main(["run", {str(folder)!r}, "--prompt", "a red circle", "--out", {str(tmp_path / "cli.png")!r}]) == 0
        assert main(["run", {str(folder)!r}, "--prompt", " ", "--out", {str(tmp_path / "e.png")!r}]) == 2
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print("LOADED", loaded)
        assert not loaded
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout and "STAGES []" in proc.stdout
    assert (tmp_path / "cli.png").exists()
    assert "empty prompt" in proc.stderr
    from reference.pipeline import ReferencePipeline

    want = ReferencePipeline(model)(
        ["a small red circle above a blue square"] * 2, steps=4, seed=3, output="pt"
    ).numpy()
    assert psnr_uint8(np.load(tmp_path / "x.npy"), want) >= 40.0  # the fp32 floor of verify.TOLERANCES


def test_control_image_path(engine, model):  # noqa: F811
    from pixart_export.verify import control_image
    from reference.pipeline import ReferencePipeline

    folder, _ = engine
    pipe = runtime.load(folder)
    image = control_image(128, 128)
    got = pipe("a house", seed=1, control_image=image, conditioning_scale=0.7, output="np")
    want = ReferencePipeline(model)("a house", seed=1, control_image=image, conditioning_scale=0.7, output="pt").numpy()
    plain = pipe("a house", seed=1, output="np")
    assert psnr_uint8(got, want) >= 40.0
    assert np.abs(got - plain).max() > 1e-3  # the control image changes the result


def _tamper(folder: Path, edit) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_refuses_changed_files(tmp_path):
    folder = copy_engine(tmp_path / "e")
    graph = next(folder.glob("vae_decoder_*.onnx"))
    data = bytearray(graph.read_bytes())
    data[-10] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(EngineError, match=f"{graph.name}: sha256 differs.*rebuild"):
        runtime.load(folder)
    graph.unlink()
    with pytest.raises(EngineError, match="missing"):
        runtime.load(folder)


def test_refuses_unlisted_and_escaping_files(tmp_path):
    folder = copy_engine(tmp_path / "e")
    (folder / "extra.onnx").write_bytes(b"x")
    with pytest.raises(EngineError, match="not in the manifest: extra.onnx"):
        runtime.load(folder)
    (folder / "extra.onnx").unlink()
    _tamper(folder, lambda m: m["files"].update({"../outside": {"sha256": "0", "bytes": 1}}))
    with pytest.raises(EngineError, match="not a plain relative path inside the folder"):
        runtime.load(folder)


def test_refuses_backend_and_schema_mismatch(tmp_path):
    folder = copy_engine(tmp_path / "e")
    _tamper(folder, lambda m: m["backend"].update({"version": "99.0.0"}))
    with pytest.raises(EngineError, match="built and verified with onnxruntime 99.0.0.*upgrade"):
        runtime.load(folder)
    _tamper(folder, lambda m: m["backend"].update({"version": ort.__version__}))
    runtime.load(folder)
    # a target this version does not know, and a backend that disagrees with the target
    _tamper(folder, lambda m: m.update({"backend": {"name": "tvm", "version": "0.1"}, "target": "tvm-cpu"}))
    with pytest.raises(EngineError, match="target 'tvm-cpu' is unknown"):
        runtime.load(folder)
    _tamper(folder, lambda m: m.update({"backend": {"name": "openvino", "version": "0.1"}, "target": "ort-cpu"}))
    with pytest.raises(EngineError, match="target ort-cpu runs on onnxruntime, but the manifest says backend"):
        runtime.load(folder)
    _tamper(folder, lambda m: m.update({"backend": {"name": "onnxruntime", "version": "0.1"}, "target": "ov-cpu"}))
    with pytest.raises(EngineError, match="target ov-cpu runs on openvino"):
        runtime.load(folder)
    _tamper(folder, lambda m: m.update({"schema_version": 1}))
    with pytest.raises(EngineError, match="schema version"):
        runtime.load(folder)
    with pytest.raises(EngineError, match="not an engine folder"):
        runtime.load(tmp_path)


def test_resolution_not_in_engine(engine):  # noqa: F811
    folder, _ = engine
    with pytest.raises(Exception, match="not in this engine"):
        runtime.load(folder)("x", resolution=256)


def test_tokenizer_json_matches_transformers(tmp_path):
    """The `tokenizers` path (T5-style tokenizer.json): same ids/mask as transformers' fast tokenizer,
    padding and truncation included. A word-level vocabulary stands in for T5's sentencepiece model
    (none ships here); what is tested is our padding/truncation/special-token handling."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from pixart_export.runtime.tokenizer import JsonTokenizer

    words = "a small red circle above blue square".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    prompts = ["a small red circle above a blue square", "unknown words here", " ".join(["red"] * 30)]
    want = fast(prompts, padding="max_length", max_length=12, truncation=True)
    ids, mask = JsonTokenizer(tmp_path / "tokenizer.json", 12)(prompts)
    assert ids.tolist() == want.input_ids and mask.tolist() == want.attention_mask
    assert ids[2, -1] == 1  # truncated rows still end with </s>


def test_precision_choice(engine):  # noqa: F811
    """`run --precision` chooses among what the folder carries: an ort-cpu folder carries fp32 only."""
    from pixart_export.errors import UserError

    folder, _ = engine
    assert runtime.load(folder, precision="fp32").precision == "fp32"
    with pytest.raises(UserError, match="carries no int8 choice; choose one of fp32"):
        runtime.load(folder, precision="int8")
    with pytest.raises(UserError, match="precision 'int4' is unknown"):
        runtime.load(folder, precision="int4")
