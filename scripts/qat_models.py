"""The model zoo and datasets of qatkit's QAT scripts (offline, deterministic).

- digits: scikit-learn's 1797 8x8 images, pixels scaled to [0, 1];
- MLP (docs/papers.md E3: 64-256-256-10 with BatchNorm, or without for the DDP check), CNN,
  depthwise-separable CNN (E1's DS-CNN);
- a tiny BitNet-style decoder (E5: 2 layers, d_model 128, 4 heads, context 64) on a character
  corpus built from the docstrings of a fixed list of standard-library modules.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn


# the scripts' command lines


def number_arg(kind, lo, strict=False, hi=None):
    """An argparse type: a number of ``kind`` (int / float) at least ``lo`` (above it if ``strict``)
    and at most ``hi``; a bad value is a usage error naming the option, not a traceback from deep
    inside the run."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if v < lo or (strict and v == lo) or v != v:
            raise argparse.ArgumentTypeError(f"expected a value {'>' if strict else '>='} {lo}, got {text}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"expected a value <= {hi}, got {text}")
        return v
    return parse


def check_folds(ap, folds: int) -> None:
    """argparse's usage error where --folds exceeds the digits' smallest class (stratified_folds:
    every fold tests every class)."""
    smallest = int(torch.bincount(load_digits()[1]).min())
    if folds > smallest:
        ap.error(f"--folds: expected 2 to {smallest} (the digits' smallest class), got {folds}")


def load_digits():
    """(x float32 [1797, 64] in [0, 1], y int64 [1797])."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    return x, y


def stratified_folds(y: torch.Tensor, k: int, seed: int = 0):
    """k (train_idx, test_idx) pairs; every sample is a test sample exactly once, and every fold
    holds every class (k above the smallest class's size raises ValueError: with --folds 2000 on
    the 1797 digits, fold 0 tested one image and reported 100 %)."""
    if not 2 <= k <= int(torch.bincount(y).min()):
        raise ValueError(f"folds: expected 2 to {int(torch.bincount(y).min())} (the smallest class's size, so that every "
                         f"fold tests every class), got {k}")
    g = torch.Generator().manual_seed(seed)
    fold_of = torch.empty_like(y)
    for c in y.unique():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        fold_of[idx] = torch.arange(len(idx)) % k
    return [((fold_of != f).nonzero().flatten(), (fold_of == f).nonzero().flatten()) for f in range(k)]


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0,
                     lr: float = 3e-3, batch: int = 64) -> nn.Module:
    """Plain FP32 training (Adam, cross entropy, shuffled mini-batches); returns the model in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class MLP(nn.Module):
    def __init__(self, bn: bool = True, hidden: int = 256):
        super().__init__()
        norm = (lambda n: nn.BatchNorm1d(n)) if bn else (lambda n: nn.Identity())
        self.net = nn.Sequential(
            nn.Linear(64, hidden),
            norm(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            norm(hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], -1))

    def as_sequential(self) -> nn.Sequential:
        """The same layers (shared) as an nn.Sequential over [N, 64] inputs: what qatkit.export
        can describe for qatkit.load and the C++ loader (a custom forward cannot be)."""
        return nn.Sequential(nn.Flatten(), *self.net)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.features(x.reshape(-1, 1, 8, 8)).flatten(1))

    def as_sequential(self) -> nn.Sequential:
        """The same layers (shared) as an nn.Sequential over [N, 64] inputs (see MLP.as_sequential)."""
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), *self.features, nn.Flatten(), self.head)


class DSCNN(nn.Module):
    """E1's depthwise-separable CNN."""

    def __init__(self):
        super().__init__()

        def cbr(cin, cout, k, groups=1):
            return [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *cbr(1, 16, 3),
            *cbr(16, 16, 3, groups=16),
            *cbr(16, 32, 1),
            *cbr(32, 32, 3, groups=32),
            *cbr(32, 32, 1),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x.reshape(-1, 1, 8, 8)).flatten(1))

    def as_sequential(self) -> nn.Sequential:
        """The same layers (shared) as an nn.Sequential over [N, 64] inputs (see MLP.as_sequential)."""
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), *self.features, nn.Flatten(), self.head)


DIGITS_MODELS = {
    "mlp": lambda: MLP(bn=True),
    "mlp_nobn": lambda: MLP(bn=False),
    "cnn": CNN,
    "dscnn": DSCNN,
}

# ---------------------------------------------------------------- tiny character LM (E5)

STDLIB_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections concurrent.futures contextlib copy csv "
    "dataclasses datetime decimal difflib email enum fractions functools glob gzip hashlib heapq hmac html "
    "http.client inspect io ipaddress itertools json logging math mimetypes numbers operator os pathlib pickle "
    "pprint queue random re sched secrets shlex shutil signal socket sqlite3 statistics string struct "
    "subprocess tarfile tempfile textwrap threading time timeit tokenize traceback types typing unittest "
    "urllib.parse uuid warnings weakref zipfile zlib"
).split()


def stdlib_corpus(max_chars: int = 1_000_000) -> str:
    """Docstrings of a fixed module list (modules, classes, functions), in a fixed order, ASCII only."""
    parts, seen = [], set()
    for name in STDLIB_MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional module missing on this platform
            continue
        objs = [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]
        for o in objs:
            doc = inspect.getdoc(o) if (inspect.ismodule(o) or inspect.isclass(o) or inspect.isroutine(o)) else None
            if doc and doc not in seen and len(doc) > 40:
                seen.add(doc)
                parts.append(doc.encode("ascii", "ignore").decode())
    return "\n\n".join(parts)[:max_chars]


class CharDataset:
    """Encodes a corpus as bytes (vocab 128); 90 % train / 10 % held out."""

    def __init__(self, text: str, context: int = 64):
        data = torch.tensor(list(text.encode("ascii", "ignore")), dtype=torch.int64).clamp(max=127)
        n = int(len(data) * 0.9)
        self.train, self.val, self.context, self.vocab = data[:n], data[n:], context, 128

    def batch(self, split: str, batch: int, gen: torch.Generator):
        d = self.train if split == "train" else self.val
        i = torch.randint(0, len(d) - self.context - 1, (batch,), generator=gen)
        x = torch.stack([d[j : j + self.context] for j in i.tolist()])
        y = torch.stack([d[j + 1 : j + 1 + self.context] for j in i.tolist()])
        return x, y


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class TinyLM(nn.Module):
    """2-layer decoder, d_model 128, 4 heads, context 64; embeddings and head are the layers
    BitNet keeps in high precision (they are the first and last layers prepare_qat sees)."""

    def __init__(self, vocab: int = 128, d: int = 128, heads: int = 4, layers: int = 2, context: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(context, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def bits_per_char(model, ds: CharDataset, batches: int = 20, batch: int = 32, seed: int = 123) -> float:
    """Held-out cross-entropy in bits per character (a fixed set of held-out windows)."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for _ in range(batches):
            x, y = ds.batch("val", batch, g)
            total += F.cross_entropy(model(x).reshape(-1, ds.vocab), y.reshape(-1)).item()
    return total / batches / math.log(2)


def print_table(head, lines, md: bool = False) -> None:
    """Print rows of strings as a markdown table (``md``) or as aligned plain columns."""
    if md:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for ln in lines:
            print("| " + " | ".join(ln) + " |")
        return
    w = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    for ln in lines:
        print("  ".join(v.ljust(w[i]) for i, v in enumerate(ln)))
