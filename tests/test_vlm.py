"""VLM backbones: tiny Qwen2.5-VL and Qwen3-VL built offline, driven through their real code paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_helpers import FAMILIES, build, encode, random_views

from vlablocks.cli.main import main as cli_main
from vlablocks.core.build import build as build_component
from vlablocks.core.registry import VLMS
from vlablocks.core.vlm import VLMBackbone
from vlablocks.core.vlm.decoding import decode, until_stop
from vlablocks.core.vlm.runtime import resolve_attn_implementation, resolve_dtype
from vlablocks.core.vlm.tokenizer import QWEN_SPECIAL_TOKENS, tiny_tokenizer
from vlablocks.core.vlm.vision import sincos_2d

ACTION_TOKENS = [f"<|act_{i}|>" for i in range(4)]


def mixed_batch(seed: int = 0) -> list[dict]:
    """Sample 0: two views of different sizes (one a PIL image); sample 1: one view."""
    rng = np.random.default_rng(seed)
    first, second = random_views(rng, [(64, 80), (120, 90)])
    return [
        {"views": [first, Image.fromarray(second)], "prompt": "pick the red block"},
        {"views": random_views(rng, [(100, 100)]), "prompt": "open the top drawer"},
    ]


def tokens_per_view(vlm: VLMBackbone) -> int:
    factor = vlm.patch_size * vlm.merge_size
    return (vlm.view_size[0] // factor) * (vlm.view_size[1] // factor)


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_backward_mixed_views(name):
    vlm = build(name)
    out = vlm(encode(vlm, mixed_batch()))
    batch, length, hidden = out.last_hidden_state.shape
    assert (batch, hidden) == (2, vlm.hidden_size)
    assert len(out.hidden_states) == vlm.num_layers + 1 == 3
    assert all(h.shape == (batch, length, hidden) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    per_view = tokens_per_view(vlm)
    assert out.vision_mask.sum(1).tolist() == [2 * per_view, per_view]
    assert out.view_index[out.vision_mask].tolist() == [0] * per_view + [1] * per_view + [0] * per_view
    assert (out.view_index[~out.vision_mask] == -1).all()
    assert (out.vision_positions[~out.vision_mask] == 0).all()
    # Left padding: the shorter sample starts with pad tokens, both end with the assistant start.
    assert out.attention_mask[1, 0] == 0 and out.attention_mask[:, -1].tolist() == [1, 1]
    out.last_hidden_state.square().mean().backward()
    vision_grad = vlm.model.model.visual.patch_embed.proj.weight.grad
    text_grad = vlm.model.get_input_embeddings().weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0
    assert text_grad is not None and text_grad.abs().sum() > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_batching_with_left_padding_matches_single_samples(name):
    vlm = build(name).eval()
    examples = mixed_batch()
    with torch.no_grad():
        both = vlm(encode(vlm, examples))
        alone = vlm(encode(vlm, examples[1:]))
    real = both.attention_mask[1].bool()
    torch.testing.assert_close(both.last_hidden_state[1, real], alone.last_hidden_state[0], atol=1e-5, rtol=1e-4)


def test_one_view_per_sample_and_sizes_per_family():
    examples = [{"views": random_views(np.random.default_rng(i), [(48, 64)]), "prompt": "push"} for i in range(2)]
    for name, size in (("qwen2_5_vl", (112, 112)), ("qwen3_vl", (128, 128))):
        vlm = build(name)
        assert vlm.view_size == size  # 112 rounded to multiples of 28 (Qwen2.5-VL) and 32 (Qwen3-VL)
        out = vlm(encode(vlm, examples))
        assert out.vision_mask.sum(1).tolist() == [tokens_per_view(vlm)] * 2 == [16, 16]
        out.last_hidden_state.sum().backward()


@pytest.mark.parametrize("name", FAMILIES)
def test_special_tokens_and_requested_positions(name):
    vlm = build(name)
    rows_before = vlm.model.get_input_embeddings().num_embeddings
    ids = vlm.add_special_tokens(ACTION_TOKENS)
    assert ids == [vlm.tokenizer.convert_tokens_to_ids(t) for t in ACTION_TOKENS]
    assert len(set(ids)) == 4 and min(ids) >= rows_before
    assert vlm.model.get_input_embeddings().num_embeddings == len(vlm.tokenizer) == rows_before + 4
    assert vlm.add_special_tokens(ACTION_TOKENS[:2]) == ids[:2]  # idempotent
    act_0, act_1, act_2 = (vlm.token_id(t) for t in ACTION_TOKENS[:3])
    # A fixed suffix for every sample, then a per-sample answer.
    answers = ["<|act_1|>text<|act_1|>", "<|act_1|><|act_1|>"]
    examples = [{**example, "answer": answer} for example, answer in zip(mixed_batch(), answers)]
    out = vlm(encode(vlm, examples, suffix="<|act_0|>"), requested_token_ids=[act_0, act_1])
    assert set(out.token_positions) == {act_0, act_1}
    for token_id in (act_0, act_1):
        positions = out.token_positions[token_id]
        assert (out.input_ids.gather(1, positions) == token_id).all()
    assert out.token_positions[act_0].shape == (2, 1)
    assert out.token_positions[act_1].shape == (2, 2)
    length = out.input_ids.shape[1]
    assert out.token_positions[act_0][1].tolist() == [length - 3]
    assert out.token_positions[act_1][1].tolist() == [length - 2, length - 1]
    uneven = [mixed_batch()[0], {**mixed_batch()[1], "answer": "<|act_2|>"}]
    with pytest.raises(ValueError, match=r"'<\|act_2\|>' occurs \[0, 1\] times"):
        vlm(encode(vlm, uneven), requested_token_ids=[act_2])
    with pytest.raises(ValueError, match="not in the tokenizer"):
        vlm.token_id("<|unknown|>")


@pytest.mark.parametrize("name", FAMILIES)
def test_lora_trains_fewer_params_and_merges_exactly(name):
    vlm = build(name).eval()
    examples = mixed_batch()
    with torch.no_grad():
        base = vlm(encode(vlm, examples)).last_hidden_state
    trainable_before = sum(p.numel() for p in vlm.parameters() if p.requires_grad)
    vlm.enable_lora(vlm.config.lora)
    trainable = {n: p.numel() for n, p in vlm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".language_model." in n for n in trainable)  # apply_to: llm
    assert sum(trainable.values()) < trainable_before / 10
    for param_name, param in vlm.named_parameters():
        if "lora_B" in param_name:  # peft starts B at zero; make the adapters do something
            torch.nn.init.normal_(param, std=0.1)
    with torch.no_grad():
        adapted = vlm(encode(vlm, examples)).last_hidden_state
        assert (adapted - base).abs().max() > 1e-3
        plain = vlm.merge_lora()
        merged = vlm(encode(vlm, examples)).last_hidden_state
    assert type(plain) is vlm.model_class and plain is vlm.model
    assert not any("lora_" in n for n, _ in vlm.named_parameters())
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_lora_scopes_and_target_patterns():
    vlm = build("qwen2_5_vl", lora={"enabled": True, "apply_to": "vision", "target_modules": ["qkv"], "rank": 4})
    names = [n for n, p in vlm.named_parameters() if p.requires_grad]
    assert names and all(".visual.blocks." in n and ".attn.qkv.lora_" in n for n in names)
    assert len(names) == 2 * vlm.config.tiny_vision_depth  # lora_A and lora_B per block
    regex = build("qwen3_vl", lora={"enabled": True, "apply_to": "both", "target_modules": r".*\.(q_proj|qkv)"})
    wrapped = {n.rsplit(".lora_", 1)[0] for n, p in regex.named_parameters() if p.requires_grad}
    assert any(".language_model." in n for n in wrapped) and any(".visual." in n for n in wrapped)
    assert all(n.endswith((".q_proj", ".qkv")) for n in wrapped)
    with pytest.raises(ValueError, match="matched no Linear layer in the llm"):
        build("qwen2_5_vl", lora={"enabled": True, "target_modules": ["nonexistent_proj"]})
    with pytest.raises(ValueError, match="merge the LoRA adapters first"):
        regex.save_pretrained("/nonexistent")


@pytest.mark.parametrize("name", FAMILIES)
def test_save_pretrained_and_rebuild_from_base_vlm(name, tmp_path):
    vlm = build(name, seed=3).eval()
    vlm.add_special_tokens(ACTION_TOKENS)
    vlm.save_pretrained(tmp_path)
    reloaded = build_component(VLMS, {"name": name, "base_vlm": str(tmp_path)}).eval()
    assert reloaded.token_id("<|act_3|>") == vlm.token_id("<|act_3|>")
    examples = mixed_batch(seed=5)
    with torch.no_grad():
        expected = vlm(encode(vlm, examples, suffix="<|act_0|>"), requested_token_ids=[vlm.token_id("<|act_0|>")])
        act_0 = reloaded.token_id("<|act_0|>")
        got = reloaded(encode(reloaded, examples, suffix="<|act_0|>"), requested_token_ids=[act_0])
    assert torch.equal(got.input_ids, expected.input_ids)
    assert torch.equal(got.token_positions[act_0], expected.token_positions[act_0])
    for a, b in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_base_vlm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        build("qwen2_5_vl", base_vlm=str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights \(found: config.json\)"):
        build("qwen2_5_vl", base_vlm=str(tmp_path))
    saved = tmp_path / "saved"
    build("qwen2_5_vl").save_pretrained(saved)
    with pytest.raises(ValueError, match="holds a 'qwen2_5_vl' model, not 'qwen3_vl'"):
        build("qwen3_vl", base_vlm=str(saved))
    (saved / "tokenizer.json").unlink()
    (saved / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        build("qwen2_5_vl", base_vlm=str(saved))


def test_bad_vlm_options():
    with pytest.raises(ValueError, match="image_size must be an int or"):
        build("qwen2_5_vl", image_size=[1, 2, 3])
    with pytest.raises(ValueError, match=r"vlm.image_std must be 3 per-channel numbers"):
        build("qwen2_5_vl", image_std=[0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match=r"vlm.image_mean applies to random-init builds only; .*: drop vlm.image_mean"):
        build("qwen2_5_vl", base_vlm="/any/dir", image_mean=[0.5, 0.5, 0.5])


@pytest.mark.parametrize("name", FAMILIES)
def test_text_embedding_init_std_scales_every_row_and_nothing_else(name):
    plain, scaled = build(name, seed=4), build(name, seed=4, text_embedding_init_std=0.2)
    for vlm in (plain, scaled):
        torch.manual_seed(5)  # the same draw for the added rows
        vlm.add_special_tokens(ACTION_TOKENS)
    original_rows = plain.model.get_input_embeddings().weight.shape[0] - len(ACTION_TOKENS)
    expected = plain.model.get_input_embeddings().weight * (0.2 / 0.02)
    torch.testing.assert_close(scaled.model.get_input_embeddings().weight, expected)  # added query rows included
    assert 0.18 < scaled.model.get_input_embeddings().weight[:original_rows].std().item() < 0.22
    others = {k: v for k, v in plain.model.state_dict().items() if "embed_tokens" not in k}
    for key, value in others.items():  # the random stream is untouched: every other weight is the same draw
        assert torch.equal(scaled.model.state_dict()[key], value), key
    with pytest.raises(ValueError, match=r"vlm.text_embedding_init_std applies to random-init builds only"):
        build(name, base_vlm="/any/dir", text_embedding_init_std=0.2)
    with pytest.raises(ValueError, match=r"vlm.text_embedding_init_std must be > 0, got 0.0"):
        build(name, text_embedding_init_std=0.0)


@pytest.mark.parametrize("name", FAMILIES)
def test_image_mean_and_std_set_the_tiny_normalization_and_survive_save(name, tmp_path):
    """A patch of the configured mean colour enters the tower as exact zeros; one std above it as exact ones."""
    mean, std = [0.55, 0.6, 0.45], [0.1, 0.2, 0.25]
    vlm = build(name, image_mean=mean, image_std=std)
    patches = torch.empty(2, 3, vlm.patch_size, vlm.patch_size, dtype=torch.uint8)
    for channel in range(3):
        patches[0, channel] = round(255 * mean[channel])
        patches[1, channel] = round(255 * (mean[channel] + std[channel]))
    values = vlm.pixel_values(patches).view(2, 3, -1)
    rounding = 0.5 / (255 * min(std))  # the uint8 rounding of the test colours
    assert values[0].abs().max() <= rounding and (values[1] - 1).abs().max() <= rounding
    default = build(name).pixel_values(patches).view(2, 3, -1)
    assert default[0].abs().min() > 0.05  # the family's own normalization does not centre this colour
    vlm.save_pretrained(tmp_path)
    reloaded = build_component(VLMS, {"name": name, "base_vlm": str(tmp_path)})
    torch.testing.assert_close(reloaded.pixel_values(patches), vlm.pixel_values(patches), atol=0, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_vision_hook_changes_only_what_follows_the_hooked_view(name):
    vlm = build(name).eval()
    examples = mixed_batch()

    def zero_second_view_of_first_sample(embeds, info):
        keep = ~((info.batch_index == 0) & (info.view_index == 1))
        return embeds * keep[:, None].to(embeds.dtype)

    with torch.no_grad():
        plain = vlm(encode(vlm, examples))
        hooked = vlm(encode(vlm, examples), vision_hook=zero_second_view_of_first_sample)
    first_hooked = int(((plain.view_index[0] == 1)).nonzero()[0])
    diff = (hooked.last_hidden_state - plain.last_hidden_state).abs().amax(-1)
    assert diff[0, :first_hooked].max() < 1e-6  # causal attention: earlier tokens cannot see the change
    assert diff[0, first_hooked:].min() > 1e-4
    assert diff[1].max() < 1e-6  # the other sample is untouched
    with pytest.raises(ValueError, match="vision_hook must return image embeddings of shape"):
        vlm(encode(vlm, examples), vision_hook=lambda embeds, info: embeds[:-1])


@pytest.mark.parametrize("name", FAMILIES)
def test_sincos2d_adds_the_fixed_code_before_the_hook(name):
    captured = {}

    def capture(key):
        def hook(embeds, info):
            captured[key] = (embeds.detach().clone(), info.grid_rc)
            return embeds

        return hook

    plain = build(name, seed=1)
    coded = build(name, seed=1, vision_position_encoding="sincos2d")
    examples = mixed_batch()
    with torch.no_grad():
        plain(encode(plain, examples), vision_hook=capture("none"))
        coded(encode(coded, examples), vision_hook=capture("sincos2d"))
    (base, grid_rc), (with_code, _) = captured["none"], captured["sincos2d"]
    torch.testing.assert_close(with_code - base, sincos_2d(grid_rc, plain.hidden_size), atol=1e-5, rtol=0)


def test_sincos_2d_values():
    code = sincos_2d(torch.tensor([[0, 0], [0, 1], [1, 0], [3, 2]]), 8)
    quarter = torch.tensor([1.0, 0.01])  # 1 / 10000 ** (i / 2)
    expected = []
    for row, col in ((0, 0), (0, 1), (1, 0), (3, 2)):
        expected.append(
            torch.cat([(row * quarter).sin(), (row * quarter).cos(), (col * quarter).sin(), (col * quarter).cos()])
        )
    torch.testing.assert_close(code, torch.stack(expected))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(torch.zeros(1, 2, dtype=torch.long), 6)


class ScriptedLogits:
    """Forward hook on lm_head: makes a disallowed token the raw favourite and scripts the allowed order."""

    def __init__(self, disallowed: int, script: list[int]) -> None:
        self.disallowed, self.script, self.step = disallowed, script, 0

    def __call__(self, module, args, logits):
        logits = logits.clone()
        logits[:, -1, self.disallowed] += 1e4
        logits[:, -1, self.script[min(self.step, len(self.script) - 1)]] += 1e3
        self.step += 1
        return logits


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_decoding_masks_and_stops(name):
    vlm = build(name).eval()
    ids = vlm.add_special_tokens(ACTION_TOKENS)
    stop = vlm.token_id("<|im_end|>")
    handle = vlm.model.lm_head.register_forward_hook(
        ScriptedLogits(vlm.token_id("<|box_start|>"), [ids[2], ids[0], stop])
    )
    try:
        decoded = decode(vlm, encode(vlm, mixed_batch()), stop, max_new_tokens=6, allowed_token_ids=ids[:3])
    finally:
        handle.remove()
    assert until_stop(decoded["tokens"], stop) == [[ids[2], ids[0]], [ids[2], ids[0]]]
    assert decoded["tokens"][:, 2:].eq(stop).all()  # the stop, then stop padding
    assert decoded["mask"].tolist() == [[True] * 3 + [False] * 3] * 2


@pytest.mark.parametrize("name, encoding", [("qwen2_5_vl", "none"), ("qwen3_vl", "sincos2d")])
def test_greedy_decoding_matches_greedy_forward(name, encoding):
    """KV-cached decoding equals re-running the full forward with the decoded tokens as suffix."""
    vlm = build(name, vision_position_encoding=encoding).eval()
    ids = vlm.add_special_tokens(ACTION_TOKENS)
    stop = vlm.token_id("<|im_end|>")
    examples = mixed_batch()
    generated = until_stop(decode(vlm, encode(vlm, examples), stop, 3, allowed_token_ids=ids)["tokens"], stop)
    allowed = torch.tensor(ids + [stop])
    for index, example in enumerate(examples):
        expected: list[int] = []
        for _ in range(3):
            with torch.no_grad():
                suffix = "".join(vlm.tokenizer.convert_ids_to_tokens(expected))
                hidden = vlm(encode(vlm, [example], suffix=suffix)).last_hidden_state[0, -1]
            best = int(allowed[vlm.model.lm_head(hidden)[allowed].argmax()])
            if best == stop:
                break
            expected.append(best)
        assert generated[index] == expected
        assert set(generated[index]) <= set(ids) and len(generated[index]) <= 3


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        vlm = build("qwen2_5_vl", gradient_checkpointing=checkpointing)
        assert vlm.model.model.language_model.layers[0].gradient_checkpointing == checkpointing
        assert vlm.model.model.visual.blocks[0].gradient_checkpointing == checkpointing
        vlm(encode(vlm, mixed_batch())).last_hidden_state.square().mean().backward()
        grads.append(vlm.model.model.language_model.layers[0].mlp.up_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_published_architecture_numbers(qwen25):
    qwen3 = build("qwen3_vl")
    seven = qwen25.model_config("7b", qwen25.tokenizer)
    assert seven.text_config.hidden_size == 3584 and seven.text_config.num_hidden_layers == 28
    assert (seven.text_config.num_attention_heads, seven.text_config.num_key_value_heads) == (28, 4)
    assert seven.text_config.intermediate_size == 18944 and seven.text_config.vocab_size == 152064
    assert seven.vision_config.out_hidden_size == 3584 and seven.vision_config.depth == 32
    three = qwen25.model_config("3b", qwen25.tokenizer)
    assert (three.text_config.hidden_size, three.text_config.num_hidden_layers) == (2048, 36)
    assert three.text_config.num_key_value_heads == 2 and three.tie_word_embeddings
    eight = qwen3.model_config("8b", qwen3.tokenizer)
    assert (eight.text_config.hidden_size, eight.text_config.num_hidden_layers) == (4096, 36)
    assert eight.vision_config.deepstack_visual_indexes == [8, 16, 24] and eight.vision_config.patch_size == 16
    assert qwen3.model_config("4b", qwen3.tokenizer).text_config.intermediate_size == 9728
    for config in (seven, eight):
        assert config.image_token_id == qwen25.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    with pytest.raises(ValueError, match=r"qwen3_vl has no published arch '7b' \(available: tiny, 2b, 4b, 8b\)"):
        qwen3.model_config("7b", qwen3.tokenizer)


def test_tiny_tokenizer_is_deterministic_and_carries_qwen_tokens(tmp_path):
    first = tiny_tokenizer(tmp_path / "a")
    second = tiny_tokenizer(tmp_path / "b")
    assert first.get_vocab() == second.get_vocab()
    assert (tmp_path / "a" / "vocab.json").is_file()
    cached = tiny_tokenizer(tmp_path / "a")
    assert cached.get_vocab() == first.get_vocab()
    special_ids = first.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    assert special_ids == list(range(len(QWEN_SPECIAL_TOKENS)))
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>pick the red block<|im_end|>"
    ids = first(text).input_ids
    assert ids[0] == first.convert_tokens_to_ids("<|im_start|>") and first.decode(ids) == text
    assert ids.count(first.convert_tokens_to_ids("<|image_pad|>")) == 1


def test_tiny_tokenizer_vqa_corpus_makes_question_words_single_tokens(tmp_path):
    robot, vqa = tiny_tokenizer(tmp_path / "robot"), tiny_tokenizer(tmp_path / "vqa", extra=("vqa",))
    for answer in ("none", "blue", "yes"):  # an answer opens the assistant turn: no leading space
        assert len(robot.tokenize(answer)) > 1 and vqa.tokenize(answer) == [answer]
    assert vqa.tokenize("what colour is the block in row 2, column 3?") == (
        ["what", "Ġcolour", "Ġis", "Ġthe", "Ġblock", "Ġin", "Ġrow", "Ġ", "2", ",", "Ġcolumn", "Ġ", "3", "?"]
    )
    assert robot.tokenize("pick the red block") == vqa.tokenize("pick the red block")
    with pytest.raises(ValueError, match=r"unknown tiny tokenizer corpora \['vqa2'\]; choose from \['vqa'\]"):
        tiny_tokenizer(tmp_path / "bad", extra=("vqa2",))


def test_tiny_tokenizer_corpora_option_reaches_the_build(tmp_path):
    vlm = build("qwen2_5_vl", tiny_tokenizer_corpora=["vqa"])
    assert vlm.tokenizer.tokenize("none") == ["none"]
    assert len(build("qwen2_5_vl").tokenizer.tokenize("none")) > 1
    with pytest.raises(ValueError, match=r"vlm.tiny_tokenizer_corpora applies to random-init builds only"):
        build("qwen2_5_vl", base_vlm="/any/dir", tiny_tokenizer_corpora=["vqa"])
    # a VLM saved with it (stage 1 of two-stage co-training) carries its vocabulary to a base_vlm build (stage 2)
    vlm.save_pretrained(tmp_path / "stage1")
    reloaded = build_component(VLMS, {"name": "qwen2_5_vl", "base_vlm": str(tmp_path / "stage1")})
    assert reloaded.tokenizer.get_vocab() == vlm.tokenizer.get_vocab()
    assert reloaded.tokenizer.tokenize("none") == ["none"]


def test_runtime_choices_on_cpu(qwen25):
    if not torch.cuda.is_available():
        assert resolve_dtype("auto") == torch.float32
        assert resolve_attn_implementation("auto") == "sdpa"
        assert qwen25.model.config._attn_implementation == "sdpa"
        assert qwen25.model.dtype == torch.float32
    assert resolve_attn_implementation("eager") == "eager"
    with pytest.raises(ValueError, match="dtype must be auto, float32, bfloat16 or float16"):
        resolve_dtype("fp8")


def test_yaml_section_is_validated_against_the_config():
    from vlablocks.core.config import ConfigError, validate

    checked = validate(
        {"name": "qwen3_vl", "image_size": [64, 96], "lora": {"rank": 4}}, VLMS.entry("qwen3_vl").config_class
    )
    assert checked["image_size"] == [64, 96] and checked["lora"]["apply_to"] == "llm"
    with pytest.raises(
        ConfigError, match=r"unknown key framework\.vlm\.lora\.rnak — did you mean framework\.vlm\.lora\.rank"
    ):
        validate({"name": "qwen3_vl", "lora": {"rnak": 4}}, VLMS.entry("qwen3_vl").config_class, "framework.vlm")


def test_list_vlms_shows_both_families(capsys):
    assert cli_main(["list", "vlms"]) == 0
    listing = capsys.readouterr().out
    assert "qwen2_5_vl" in listing and "Qwen2.5-VL" in listing
    assert "qwen3_vl" in listing and "Qwen3-VL" in listing
