"""SPRINT-style token dropping for classification training of a timm VisionTransformer (random weights).

    pip install timm           # or: pip install sprintc[hf]
    python examples/transform_timm.py

The middle blocks see the class token plus 25% of the patch tokens; the class token (timm's
num_prefix_tokens, register tokens too) is never dropped. A ViT has no null class, so the default
pipeline leaves out PDG.
"""
import copy

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import sprintc
from sprintc.graph import count_flops


def main():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=6, num_heads=2, num_classes=10)
    dense = copy.deepcopy(model)
    report = sprintc.transform(model)  # partition 2/2, route structured 0.75, fuse concat_linear, path drop 0.1
    print(report)

    x, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    model.train()
    before, after = count_flops(lambda: dense(x)), count_flops(lambda: model(x))
    print(f"\ntraining forward, batch 16: {before / 1e9:.3f} GFLOP dense -> {after / 1e9:.3f} GFLOP routed "
          f"(x{after / before:.3f}; the report predicted x{report.flop_ratio:.3f} with every sample through the "
          f"middle blocks: path drop 0.1 lets 1 of 16 skip them)")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step + 1}: loss {loss.item():.4f}")

    model.eval()  # evaluation runs all tokens (model.sprint.routing = False does the same in training)
    print(f"eval logits {tuple(model(x).shape)}; accuracy on the training batch "
          f"{(model(x).argmax(-1) == labels).float().mean().item():.2f}")


if __name__ == "__main__":
    main()
