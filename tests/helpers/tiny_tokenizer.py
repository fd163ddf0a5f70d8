"""A word-level tokenizer for tiny test models (ids of special tokens match configs/janus.py:tiny)."""

import tokenizers
from tokenizers import models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<pad>", "<bos>", "<eos>"]
WORDS = ("yes no Yes No a an the red blue green circle square triangle left right of above below "
         "does this image match description answer or is are objects placed correctly plan "
         "prompt layout was planned for every object : ? . , \\ { } 0 1 boxed User Assistant | "
         "< > _ show exactly what asks check count colour position then and Malformed drawing Nothing "
         "cyan striped").split()


def make_tokenizer(vocab_size: int = 256) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0}
    for w in dict.fromkeys(WORDS):
        vocab.setdefault(w, len(vocab))
    for i, s in enumerate(SPECIAL):
        vocab[s] = vocab_size - len(SPECIAL) + i
    vocab["<|User|>"] = len([v for v in vocab.values() if v < 200])
    vocab["<|Assistant|>"] = vocab["<|User|>"] + 1
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    tok.add_special_tokens(SPECIAL + ["<|User|>", "<|Assistant|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
