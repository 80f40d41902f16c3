"""VGF for language models (the second half of VGF's paper): the reference distribution is a causal LM
(the SFT model), the critic's counterpart is a reward model, and the particles are N sampled responses
moved in the reward model's input-embedding space by the same transport as the offline actions
(``vgfcli.nn.particles``), then decoded back to tokens and re-scored.

Modules: ``models`` (loading, the tokenizer check, the reward of embeddings), ``prompts`` (prompt sets:
readers, the canonical file), ``corpus`` (the demo's corpus, rules and synthetic preferences), ``tiny``
(GPT-2-shaped models and a BPE tokenizer made here), ``transport`` (the embedding-space VGF) and
``decoding`` (embeddings back to tokens), ``rows`` (one evaluation row's numbers).
"""
