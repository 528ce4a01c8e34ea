"""A random-weight SeqGPT stand-in: the real architecture, a locally trained tokenizer.

No weights can be downloaded where this project is developed and tested, so tests and benchmarks
run on a ``BloomForCausalLM`` built here with SeqGPT-560M's architecture and random weights (fixed
seed), plus a byte-level BPE tokenizer trained on a small built-in corpus with BLOOM's special
token ids and ``[GEN]`` registered. Both are written with ``save_pretrained`` so the loading path
under test is the one a real checkpoint takes.

The tiny variant (2 layers, hidden 64) builds and exports in seconds; the full-size variant has the
real shapes (24 layers, 16 heads, hidden 1024, vocabulary 250,880) and is the honest stand-in for
timing. Its tokenizer is the same small one: only ids below the tokenizer's size ever occur, but
the LM head, which dominates every decode step, has all 250,880 rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["FULL_SIZE", "GEN_TOKEN", "TINY", "build_tiny_seqgpt", "build_tokenizer"]

GEN_TOKEN = "[GEN]"

# SeqGPT-560M (BLOOMZ-560M) as published; vocab is padded to 250,880 like the checkpoint.
FULL_SIZE: dict[str, int] = {"n_layer": 24, "n_head": 16, "hidden_size": 1024, "vocab": 250880}
# Small enough that build + export + tests take seconds on two shared cores.
TINY: dict[str, int] = {"n_layer": 2, "n_head": 4, "hidden_size": 64, "vocab": 0}

# Special tokens in id order: BLOOM's unk 0, bos 1, eos 2, pad 3.
_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]

_CORPUS = """\
输入: [00:05:22] [轻柔竖琴泛音] 李佳琦（画外音）：姐妹们！这个精华水真的绝了！
分类: 音乐，动作，说话
输出: 音乐
输入: [00:05:28] [滴答声] 助理（OS）：老师，pH试纸变蓝了…
抽取: 说话人，状态，台词
输出: 说话人: 助理
状态: OS
台词: 老师，pH试纸变蓝了…
输入: [00:01:10] [悬疑低音提琴滑音] 女主（OS）：他骗了我三年…
分类: 背景音乐，动作音效
输出: 背景音乐
[玻璃瓶晃动声] 看！摇一摇，全是绵密泡泡！
[欢快口哨声] [掌声] [雷声隆隆] [脚步声渐近] [门被推开] [手机铃声]
♪ 轻快的钢琴曲 ♪ 男主（对白，颤抖）：你为什么不告诉我？
旁白：水分子在零度以下开始结晶。
科普博主：我们来看看这个实验。 警笛声 雨声 人群嘈杂 按键提示音
Input: [00:02:14] [soft piano music] NARRATOR (V.O.): It all began on a rainy night.
Classify: music, action, speech
Output: music
[door slams] [footsteps approaching] JOHN: Who's there? [thunder rumbles]
[upbeat electronic music] HOST (O.S.): Welcome back to the show, everyone!
[phone buzzing] MARY: I told you already, I'm not going. [sighs]
[crowd cheering] [sirens wailing in distance] ♪ la la la ♪
None music action speech speaker status text label span
"""


def _corpus_lines() -> list[str]:
    return _CORPUS.splitlines()


def build_tokenizer(vocab_size: int = 2000) -> Any:
    """Train the byte-level BPE tokenizer on the built-in corpus.

    Args:
        vocab_size: The BPE vocabulary size to aim for (the small corpus may yield fewer merges).

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with BLOOM's special-token ids and ``[GEN]``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    # BLOOM splits on nothing but bytes; add_prefix_space=False keeps "输入:" one piece of text.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repetition gives the prompt words (输入/分类/抽取/输出) enough counts to become merges.
    backend.train_from_iterator(_corpus_lines() * 8, trainer=trainer)
    fast: Any = PreTrainedTokenizerFast  # untyped constructor
    tokenizer = fast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=[GEN_TOKEN],
        padding_side="left",
        truncation_side="left",
        model_max_length=1024,
    )
    return tokenizer


def build_tiny_seqgpt(out_dir: str | Path, full_size: bool = False, seed: int = 0) -> Path:
    """Build a random-weight SeqGPT-architecture model and its tokenizer in ``out_dir``.

    Args:
        out_dir: Directory to write (created if missing).
        full_size: Use SeqGPT-560M's real shapes (for timing) instead of the tiny test shapes.
        seed: Seed for the random weights, so two builds are identical.

    Returns:
        The output directory.
    """
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    shape = FULL_SIZE if full_size else TINY
    vocab = shape["vocab"] or len(tokenizer)
    config = BloomConfig(
        vocab_size=vocab,
        hidden_size=shape["hidden_size"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        layer_norm_epsilon=1e-5,
        # The tiny model gets larger weights so its next-token distributions are peaked: greedy
        # comparisons between runtimes then test the model, not float rounding between near-ties.
        initializer_range=0.02 if full_size else 0.3,
        apply_residual_connection_post_layernorm=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=True,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model: Any = BloomForCausalLM(config)
    model.eval()
    if not full_size:
        # Random LayerNorm weights too, so the tiny model exercises every parameter.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "layernorm" in name or "ln_f" in name:
                    param.add_(torch.randn_like(param) * 0.1)
    model.generation_config.pad_token_id = 3
    model.generation_config.eos_token_id = 2
    model.generation_config.bos_token_id = 1
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
