"""The evaluation probe: a small CNN that reads a scene's layout, shapes and colours back from an
image, trained on the renderer's images only. It scores generated images against their prompts
(prompt adherence) and embeds them (its 64-d penultimate layer) for a Frechet distance, the way FID
uses Inception features; no hub model is needed. Images are classified at half size (64 px for tiny)
and training adds blur and noise so the probe tolerates the VAE's softness.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import data

HEADS = {
    "layout": len(data.LAYOUTS),
    "shape_a": len(data.SHAPES),
    "colour_a": len(data.COLOURS),
    "shape_b": len(data.SHAPES),
    "colour_b": len(data.COLOURS),
}
FEATURES = 64


class SceneClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=2, padding=1)  # stride 2, then pooled: 64 -> 16
        self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1) for a, b in ((16, 32), (32, 64))])
        self.norms = nn.ModuleList([nn.BatchNorm2d(c) for c in (16, 32, 64)])
        self.fc = nn.Linear(64 * 4 * 4, FEATURES)
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURES, n) for k, n in HEADS.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [0,1] (H = W = 128) -> features [B,64]."""
        x = F.interpolate(images, size=(64, 64), mode="area") * 2 - 1
        for conv, norm in zip([self.stem, *self.convs], self.norms):
            x = F.max_pool2d(F.relu(norm(conv(x))), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(images)
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, chunk: int = 64) -> np.ndarray:
        """Labels [B,5] (layout, shape_a, colour_a, shape_b, colour_b); b is -1 for a single shape."""
        out = []
        for i in range(0, len(images), chunk):
            logits = self(images[i : i + chunk])
            pred = torch.stack([logits[k].argmax(1) for k in HEADS], 1)
            pred[pred[:, 0] == 0, 3:] = -1
            out.append(pred)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def embed(self, images: torch.Tensor, chunk: int = 64) -> np.ndarray:
        return torch.cat([self.features(images[i : i + chunk]) for i in range(0, len(images), chunk)]).double().numpy()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random blur (3x3 box, half the batch), per-channel gain (+-10%) and Gaussian noise."""
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(len(x), 1, 1, 1, generator=g) < 0.5).float()
    x = (pick * blurred + (1 - pick) * x) * (1 + 0.1 * (2 * torch.rand(len(x), 3, 1, 1, generator=g) - 1))
    return (x + 0.04 * torch.rand(len(x), 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)).clamp(0, 1)


def loss_fn(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    total = 0.0
    pair = labels[:, 0] > 0
    for j, k in enumerate(HEADS):
        if k.endswith("_b"):
            if pair.any():
                total = total + F.cross_entropy(logits[k][pair], labels[pair, j])
        else:
            total = total + F.cross_entropy(logits[k], labels[:, j])
    return total


def train_classifier(
    seed: int = 1000,
    num_images: int = 4000,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 2e-3,
    size: int = 128,
    log=None,
) -> SceneClassifier:
    """Train on `num_images` renderer images of data set `seed` (not the DiT's seed 0), held-out
    pairs included: the probe must know every combination the evaluation asks for."""
    torch.manual_seed(seed)
    images, _, labels = data.dataset(seed, num_images, size, heldout=True)
    x_all, y_all = to_tensor(images), torch.from_numpy(labels)
    model = SceneClassifier().train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, num_images, (batch_size,), generator=g)
        loss = loss_fn(model(augment(x_all[idx], g)), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log:
            log(step, float(loss.detach()))
    return model.eval()


def adherence(pred: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """Prompt adherence of predicted labels vs the prompts' labels [N,5]: every attribute right
    ("all"), and per attribute over the objects the prompts name."""
    pair = want[:, 0] > 0
    shape_ok = np.concatenate([pred[:, 1] == want[:, 1], pred[pair, 3] == want[pair, 3]])
    colour_ok = np.concatenate([pred[:, 2] == want[:, 2], pred[pair, 4] == want[pair, 4]])
    all_ok = (pred[:, :3] == want[:, :3]).all(1) & np.where(pair, (pred[:, 3:] == want[:, 3:]).all(1), True)
    return {
        "all": float(all_ok.mean()),
        "layout": float((pred[:, 0] == want[:, 0]).mean()),
        "shape": float(shape_ok.mean()),
        "colour": float(colour_ok.mean()),
        "single_all": float(all_ok[~pair].mean()) if (~pair).any() else float("nan"),
        "pair_all": float(all_ok[pair].mean()) if pair.any() else float("nan"),
    }


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [N,d] and b [M,d]:
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrt_psd(s_a)
    cross = _sqrt_psd(root_a @ s_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(cross))
