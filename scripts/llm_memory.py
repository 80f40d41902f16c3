"""Accelerator memory of `vgf evaluate domain=llm` for real models, from their sizes alone (no download):
Pythia SFT and reward models at the sizes of VGF's paper (TL;DR: prompts of up to 512 tokens, responses of
53), N particles. Example: python scripts/llm_memory.py --policy pythia-2.8b --reward pythia-2.8b --particles 8
"""

import argparse

from vgfcli.llm.memory import ModelSize, evaluate_bytes

# Pythia's published shapes (EleutherAI/pythia-*: GPT-NeoX, vocab 50304, MLP 4x); parameters as published.
PYTHIA = {"pythia-410m": (405_334_016, 24, 1024, 16), "pythia-1b": (1_011_781_632, 16, 2048, 8),
          "pythia-1.4b": (1_414_647_808, 24, 2048, 16), "pythia-2.8b": (2_775_208_960, 32, 2560, 32),
          "pythia-6.9b": (6_857_302_016, 32, 4096, 32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", default="pythia-2.8b", choices=PYTHIA)
    parser.add_argument("--reward", default="pythia-2.8b", choices=PYTHIA)
    parser.add_argument("--judge", default=None, choices=PYTHIA)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--response-tokens", type=int, default=53)
    parser.add_argument("--dtype-bytes", type=int, default=2, help="2 for bf16/fp16, 4 for fp32")
    a = parser.parse_args()
    size = {name: ModelSize(*shape) for name, shape in PYTHIA.items()}
    parts = evaluate_bytes(size[a.policy], size[a.reward], size[a.judge] if a.judge else None,
                           particles=a.particles, prompt_tokens=a.prompt_tokens, response_tokens=a.response_tokens,
                           dtype_bytes=a.dtype_bytes)
    print(f"policy {a.policy}, reward {a.reward}, judge {a.judge}, N={a.particles}, "
          f"{a.prompt_tokens}+{a.response_tokens} tokens, {a.dtype_bytes} bytes/value")
    for name, gib in parts.items():
        print(f"  {name:18s} {gib:7.2f} GiB")


if __name__ == "__main__":
    main()
