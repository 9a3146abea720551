"""The `tokenizers` kind (T5 SentencePiece) in the C++ runtime: the OpenVINO tokenizer model that the build
writes beside tokenizer.json (openvino-tokenizers), run by the C++ library, gives the Python runtime's
JsonTokenizer ids on unicode, special-token and over-long prompts. The tokenizer is a small T5-like
SentencePiece Unigram trained here (no download): Metaspace pre-tokenizer, runs of spaces folded, `</s>`
appended by the post-processor, `<pad>` = 0, `</s>` = 1, `<unk>` = 2, two `<extra_id_N>` special tokens."""

from __future__ import annotations

import json
import random
import sys
import types
from pathlib import Path

import pytest

from tests.test_cpp import _build, tool

MAX_LENGTH = 32
PROMPTS = [
    "a red circle above a blue square",
    "A",
    "",
    "naïve café — “quotes” and ünïcödé ÀÉÎ",
    "東京の夜景、ネオン 日本",
    "emoji 🎨🙂 and flags 🇫🇷 ",
    "combining e\u0301 and zero\u200bwidth",
    "special tokens inside: </s> <pad> <unk> <extra_id_0>x<extra_id_1>",
    "  two  spaces  and a trailing one ",
    "tab\tnewline\nend",
    "zzqx unseen wrds",
    "an over-long prompt with a red circle " * 12,
    "ü" * 80,
    "red " * (MAX_LENGTH - 1),
]


def _t5_like_tokenizer(folder: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    words = (
        "a the of and red blue green yellow circle square triangle above below left right small large bright "
        "dark painting photo of cat dog tree over under next to café naïve 東京 日本 夜景 猫"
    ).split()
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=160, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(sentences, trainer)
    tok.add_special_tokens(["<extra_id_1>", "<extra_id_0>"])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def cpp_build() -> Path:
    folder, why = _build()
    if folder is None:
        pytest.skip(why)
    if "openvino" not in tool(folder, "backends").stdout.split():
        pytest.skip("C++ OpenVINO backend not built: pip install 'pixart-export[openvino]' into .venv; rebuild cpp/")
    return folder


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    """The tokenizer folder as the build writes it (export_tokenizer on a transformers fast tokenizer)."""
    pytest.importorskip(
        "openvino_tokenizers", reason="openvino-tokenizers not installed: pip install 'pixart-export[openvino]'"
    )
    from transformers import PreTrainedTokenizerFast

    from pixart_export.export.tokenizer import export_tokenizer

    root = tmp_path_factory.mktemp("t5")
    _t5_like_tokenizer(root / "trained")
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(root / "trained" / "tokenizer.json"), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    logs: list[str] = []
    entry = export_tokenizer(types.SimpleNamespace(tokenizer=fast), root / "engine", MAX_LENGTH, log=logs.append)
    assert (entry["kind"], entry["dir"], entry["max_length"], entry["pad_id"]) == (
        "tokenizers",
        "tokenizer",
        MAX_LENGTH,
        0,
    )
    folder = root / "engine" / entry["dir"]
    assert (folder / "openvino_tokenizer.xml").exists() and (folder / "openvino_tokenizer.bin").exists(), logs
    return folder


def test_no_openvino_tokenizers_skips_the_model(tmp_path, monkeypatch):
    from pixart_export.export.tokenizer import export_openvino_tokenizer

    monkeypatch.setitem(sys.modules, "openvino_tokenizers", None)  # import fails as if not installed
    logs: list[str] = []
    assert not export_openvino_tokenizer(tmp_path, MAX_LENGTH, 0, log=logs.append)
    assert "openvino-tokenizers is not installed" in logs[0] and not list(tmp_path.iterdir())


def test_t5_token_ids_equal_python(cpp_build, t5_folder, tmp_path):
    from pixart_export.runtime.tokenizer import JsonTokenizer

    ids, mask = JsonTokenizer(t5_folder / "tokenizer.json", MAX_LENGTH, 0)(PROMPTS)
    assert mask[-3].all() and ids[-3, -1] == 1  # an over-long prompt: truncated, `</s>` kept last
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS), encoding="utf-8")
    out = tool(cpp_build, "tokenize-dir", "tokenizers", t5_folder, MAX_LENGTH, 0, tmp_path / "prompts.json")
    assert [json.loads(line) for line in out.stdout.splitlines()] == ids.tolist()


def test_t5_folder_without_openvino_model_is_refused(cpp_build, t5_folder, tmp_path):
    bare = tmp_path / "tokenizer"
    bare.mkdir()
    (bare / "tokenizer.json").write_bytes((t5_folder / "tokenizer.json").read_bytes())
    (tmp_path / "prompts.json").write_text(json.dumps(["a"]), encoding="utf-8")
    proc = tool(cpp_build, "tokenize-dir", "tokenizers", bare, MAX_LENGTH, 0, tmp_path / "prompts.json", check=False)
    assert proc.returncode == 2
    assert "openvino_tokenizer.xml" in proc.stderr and "openvino" in proc.stderr
