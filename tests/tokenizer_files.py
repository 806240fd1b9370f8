"""A tiny byte-level BPE tokenizer for test model folders: every byte, a few merged words (so prompts
stay short), special tokens and plain added tokens, built with the real `tokenizers` library. ``fixed`` puts tokens
at the ids a real release gives them (the rest of the vocabulary follows them), so that tests can
assert ids and not only names."""
from __future__ import annotations


def byte_level_bpe(merged_words: tuple[str, ...], special: list[str], added: list[str] = (), limit: int = 1 << 30,
                   fixed: dict[str, int] | None = None):
    """``merged_words`` use byte-level symbols (``Ġ`` = a leading space). ``fixed`` maps names to ids
    0…n-1 (every id once); special or added tokens named there keep their fixed id."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    vocab = dict(fixed or {})
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise AssertionError("fixed ids must be dense from 0")
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in merged_words:
        left = word[0]
        for char in word[1:]:
            if left + char not in vocab:
                merges.append((left, char))
                vocab[left + char] = len(vocab)
            left += char
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    if tokenizer.get_vocab_size() > limit:
        raise AssertionError("the tiny tokenizer outgrew the embedding table")
    return tokenizer


def as_expected_by(processor_class: type, tokenizer):
    """``tokenizer`` presented as the fast tokenizer class ``processor_class`` asks for: transformers 4.x
    processors check it (Janus: ``LlamaTokenizerFast``, Emu3: ``GPT2TokenizerFast``, the classes the
    releases name), 5.x does not. The byte-level tokenizer underneath is unchanged."""
    import transformers

    wanted = getattr(processor_class, "tokenizer_class", None)
    wanted = wanted[-1] if isinstance(wanted, tuple) else wanted
    if isinstance(wanted, str) and not isinstance(tokenizer, getattr(transformers, wanted)):
        tokenizer.__class__ = getattr(transformers, wanted)
    return tokenizer
