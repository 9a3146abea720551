"""pixart_export.cli: --help everywhere, one clear line and exit 2 for bad input, README commands work."""
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
    assert main(["generate", "--model", "tiny", "--prompt", "a red circle", "--steps", "4", "--seed", "0",
                 "--out", str(out)]) == 0
    assert Image.open(out).size == (128, 128)
    assert not list(tmp_path.glob(".*.tmp"))


def test_info(capsys):
    assert main(["info", "--model", "tiny", "--controlnet", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "6 blocks, width 128" in text and "controlnet   2 copies" in text


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
