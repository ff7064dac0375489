"""SPRINT on diffusers' DiTTransformer2DModel, built from its config with random weights (no download).

    pip install diffusers      # or: pip install sprintc[hf]
    python examples/transform_diffusers.py

The same call works on a pretrained DiT (`DiTTransformer2DModel.from_pretrained("facebook/DiT-XL-2-256",
subfolder="transformer")`): sprintc finds `transformer_blocks`, reads the token grid from the patch
embedding and the null class from the label embedding (num_classes + 1 rows), and traces with
return_dict=False, so the transformed model returns a tuple.
"""
import copy

import torch
from diffusers import DiTTransformer2DModel

import sprintc
from sprintc.graph import count_flops


def main():
    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=32, in_channels=4, num_layers=6,
                                  sample_size=16, patch_size=2, num_embeds_ada_norm=10)
    dense = copy.deepcopy(model)
    report = sprintc.transform(model, {"passes": [
        {"name": "partition", "encoder": 2, "decoder": 2},
        {"name": "route", "sampler": "structured", "drop": 0.75},
        {"name": "fuse", "kind": "concat_linear"},
        {"name": "path_drop", "p": 0.1},
        {"name": "pdg"},
    ]})
    print(report)

    x, t, y = torch.randn(8, 4, 16, 16), torch.randint(0, 1000, (8,)), torch.randint(0, 10, (8,))
    model.train()
    before = count_flops(lambda: dense(x, t, y, return_dict=False))
    after = count_flops(lambda: model(x, t, y, return_dict=False))
    print(f"\ntraining forward, batch 8: {before / 1e9:.3f} GFLOP dense -> {after / 1e9:.3f} GFLOP routed "
          f"(x{after / before:.3f}; the report predicted x{report.flop_ratio:.3f})")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    noise = torch.randn_like(x)
    loss = (model(x + noise, t, y, return_dict=False)[0] - noise).square().mean()  # eps-prediction
    loss.backward()
    opt.step()
    print(f"training step: loss {loss.item():.4f}")

    model.eval()  # PDG: [cond; uncond] with the null label num_classes; the middle runs on the first half only
    null = torch.full_like(y, 10)
    eps = model.forward_guidance(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))[0]
    cond, weak = eps.chunk(2)
    print(f"PDG step: {tuple((weak + 4.0 * (cond - weak)).shape)}")
    print(f"state-dict keys: {len(dense.state_dict())} original, all kept; "
          f"{sum(k.startswith('sprint.') for k in model.state_dict())} new under sprint.")


if __name__ == "__main__":
    main()
