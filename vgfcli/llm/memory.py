"""What `vgf evaluate domain=llm` holds in accelerator memory, computed from the models' sizes: for a GPU
user choosing N, the response length and the models before a run (`scripts/llm_memory.py` prints it).

Counted, in the models' dtype:
- the weights of the reference LM, the reward model and a judge model (parameters x bytes);
- the reference LM's KV cache while it samples N responses: 2 x layers x N x (prompt + response) x width;
- the reward model's backward through N particles (the transport's drive): the activations autograd
  keeps, about ``ACTIVATIONS_PER_LAYER`` x N x tokens x width per layer (the layer's input, the norms',
  attention's q/k/v/output, the MLP's 4x-wide hidden before and after the activation), plus the
  attention probabilities N x heads x tokens^2 per layer;
- the particles and their Adam moments in fp32 (3 x N x response x width of the reward model).
Framework overhead (the CUDA context, the allocator's slack) is not in it: add about 1-2 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVATIONS_PER_LAYER = 16  # multiples of N x tokens x width kept per transformer layer for the backward


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    layers: int
    width: int
    heads: int

    @classmethod
    def of(cls, config) -> "ModelSize":
        """From a Hugging Face config (GPT-2, GPT-NeoX/Pythia, Llama-style names): parameters estimated as
        the embedding tables (one when the head is tied to the input table) plus the attention's 4 width^2
        and the MLP's 2 x width x inner per layer (norms and biases left out)."""
        layers = getattr(config, "num_hidden_layers", None) or config.n_layer
        width = getattr(config, "hidden_size", None) or config.n_embd
        heads = getattr(config, "num_attention_heads", None) or config.n_head
        inner = getattr(config, "intermediate_size", None) or 4 * width
        tables = 1 if getattr(config, "tie_word_embeddings", False) else 2  # input table, output head
        positions = getattr(config, "n_positions", 0) if getattr(config, "model_type", "") == "gpt2" else 0
        params = (config.vocab_size * tables + positions) * width + layers * (4 * width * width + 2 * width * inner)
        return cls(int(params), int(layers), int(width), int(heads))


def evaluate_bytes(policy: ModelSize, reward: ModelSize, judge: ModelSize | None, *, particles: int,
                   prompt_tokens: int, response_tokens: int, dtype_bytes: int = 2) -> dict[str, float]:
    """GiB per part and in total (see the module docstring)."""
    gib = 1024.0 ** 3
    tokens = prompt_tokens + response_tokens
    parts = {
        "policy weights": policy.parameters * dtype_bytes,
        "reward weights": reward.parameters * dtype_bytes,
        "judge weights": (judge.parameters * dtype_bytes) if judge else 0,
        "policy KV cache": 2 * policy.layers * particles * tokens * policy.width * dtype_bytes,
        "reward backward": reward.layers * particles * tokens * dtype_bytes
        * (ACTIVATIONS_PER_LAYER * reward.width + reward.heads * tokens),
        "particles + Adam": 3 * particles * response_tokens * reward.width * 4,
    }
    out = {k: v / gib for k, v in parts.items()}
    out["total"] = sum(out.values())
    return out
