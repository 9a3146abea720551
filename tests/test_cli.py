"""pixart_export.cli: --help everywhere, one clear line and an exit code per kind of failure, one option
syntax, --json. (The README's commands are run by tests/test_readme.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from pixart_export.cli import COMMANDS, main
from reference.loading import TINY_DIR

BLOCK_TORCH = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in {'torch', 'onnxruntime', 'openvino', 'tensorrt'}:
                raise ImportError('blocked for this test: ' + name)
    sys.meta_path.insert(0, Block())
    from pixart_export.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_without_heavy_backends(command):
    """--help must work on a host with none of torch/onnxruntime/openvino/tensorrt importable."""
    args = ["--help"] if command is None else [command, "--help"]
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: pixart-export" in proc.stdout


def _one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.startswith("pixart-export")]
    assert code == 2
    assert len(err) == 1 and match in err[0], err
    assert "Traceback" not in "\n".join(err)


def test_generate_writes_png(tmp_path, capsys):
    out = tmp_path / "img.png"
    assert (
        main(
            [
                "generate",
                "--model",
                "tiny",
                "--prompt",
                "a red circle",
                "--steps",
                "4",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert Image.open(out).size == (128, 128)
    assert not list(tmp_path.glob(".*.tmp"))


def test_info(capsys):
    assert main(["info", "--model", "tiny", "--controlnet", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "6 blocks, width 128" in text and "controlnet   3 copies" in text


def test_bad_inputs(tmp_path, capsys):
    _one_line_error(capsys, ["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"], "no such file")
    _one_line_error(capsys, ["info", "--model", str(tmp_path)], "unknown layout")
    _one_line_error(capsys, ["generate", "--prompt", "   "], "empty prompt")
    _one_line_error(capsys, ["generate", "--prompt", "x", "--resolution", "100"], "unsupported resolution")
    _one_line_error(capsys, ["generate", "--prompt", "x", "--steps", "20"], "1 to 8 steps")
    broken = tmp_path / "broken"
    shutil.copytree(TINY_DIR, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"corrupt")
    _one_line_error(capsys, ["info", "--model", str(broken)], "not a readable safetensors")
    (broken / "x.pth").write_bytes(b"corrupt")
    _one_line_error(capsys, ["info", "--model", str(broken / "x.pth")], "not a readable PyTorch weights file")
    _one_line_error(capsys, ["generate", "--prompt", "x", "--control-image", "c.png"], "needs --controlnet")


def test_exit_codes_and_verbosity(monkeypatch, capsys):
    """0 ok, 1 gate failed, 2 bad input, 3 internal error (traceback only with -v)."""
    from pixart_export.commands import info
    from pixart_export.errors import GateFailed

    def crash(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(info, "run", crash)
    assert main(["info"]) == 3
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and "Traceback" not in err
    assert main(["-v", "info"]) == 3
    assert "Traceback" in capsys.readouterr().err

    def gate(args):
        raise GateFailed("figures beyond tolerance")

    monkeypatch.setattr(info, "run", gate)
    assert main(["info"]) == 1
    assert "gate failed: figures beyond tolerance" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["generate", "--prompt", "x", "--seed", "-1"], "a seed is an integer from 0"),
        (["generate", "--prompt", "x", "--conditioning-scale", "nan"], "give a finite number"),
        (["generate", "--prompt", "x", "--resolution", "12x"], "give PX or HEIGHTxWIDTH"),
        (["run", "e", "--prompt", "x", "--precision", "fp4"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and match in capsys.readouterr().err


def test_one_resolution_syntax_everywhere():
    """`512` and `512x768` in build, export, run and generate alike."""
    parser = __import__("pixart_export.cli", fromlist=["build_parser"]).build_parser()
    for argv in (
        ["build", "--target", "ort-cpu", "--resolution", "512", "512x768"],
        ["export", "--out", "x", "--resolution", "512", "512x768"],
    ):
        assert parser.parse_args(argv).resolution == [(512, 512), (512, 768)]
    for argv in (
        ["run", "e", "--prompt", "p", "--resolution", "512x768"],
        ["generate", "--prompt", "p", "--resolution", "512x768"],
    ):
        assert parser.parse_args(argv).resolution == (512, 768)


def test_build_help_groups_backend_flags(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = capsys.readouterr().out
    for group in ("onnxruntime (ort-cpu, ort-cuda)", "openvino", "tensorrt"):
        assert group in out.lower(), group


def test_json_outputs(capsys):
    import json

    assert main(["targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows][:2] == ["ort-cpu", "ort-cuda"]
    assert main(["info", "--model", "tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["transformer"]["num_layers"] == 6
