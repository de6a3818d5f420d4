"""The tiny word-level tokenizer of ``conftest.tiny_tokenizer`` with a BOS token it adds by default
(imported as a plain module by the BOS tests)."""

BOS_ID = 123  # after [UNK]=0, [EOS]=1 and w0..w120 = 2..122; inside the tiny Llama's vocab of 128


def bos_tokenizer():
    """Words ``w0`` .. ``w120`` as ids 2..122; ``[BOS]`` (id 123) opens every text encoded with
    the default special tokens, as Llama-style tokenizers do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[EOS]": 1, **{f"w{i}": i + 2 for i in range(121)}, "[BOS]": BOS_ID}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", pair="[BOS] $A [BOS] $B",
                                                       special_tokens=[("[BOS]", BOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", bos_token="[BOS]")
