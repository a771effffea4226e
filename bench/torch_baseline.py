"""The reference workload (configs/bench.py) in plain PyTorch eager, for the side-by-side
comparison in bench/train_step.py. Needs the `bench` extra (`pip install -e '.[bench]'`);
mmjax itself never imports torch.

Same shapes, same computation as mmjax's model for that config: the log-mel front end is
computed inside the step from the raw waveform (as mmjax does on device), padding is
masked in attention, pre-LN blocks with tanh-GELU, CLS + joint fusion, final LayerNorm,
linear head, cross-entropy, global-norm clipping and AdamW, all in float32.

    python bench/torch_baseline.py [--steps=10]     # prints ms/step on its own
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.heads = heads
        self.ln_attn, self.ln_mlp = nn.LayerNorm(width), nn.LayerNorm(width)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, mlp), nn.Linear(mlp, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln_attn(x)
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln_mlp(x)), approximate="tanh"))


class Stack(nn.Module):
    def __init__(self, depth: int, width: int, heads: int, mlp: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp) for _ in range(depth))

    def forward(self, x, key_mask=None):
        mask = None if key_mask is None else key_mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return x


class LogMel(nn.Module):
    """mmjax.models.audio.log_mel: masked waveform -> frames -> Hann -> |rfft|^2 -> mel -> log."""

    def __init__(self, rate: int, n_mels: int, window: int, hop: int, frames: int):
        super().__init__()
        from mmjax.models.audio import LOG_FLOOR, LOG_MEL_SCALE, LOG_MEL_SHIFT, mel_filterbank

        self.window, self.hop, self.frames = window, hop, frames
        self.shift, self.scale, self.floor = LOG_MEL_SHIFT, LOG_MEL_SCALE, LOG_FLOOR
        hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(window) / window)
        self.register_buffer("hann", torch.tensor(hann, dtype=torch.float32))
        self.gain = (2.0 / hann.sum()) ** 2
        self.register_buffer("mel", torch.tensor(mel_filterbank(rate, window, n_mels)))

    def forward(self, wave, lengths):
        valid = torch.arange(wave.shape[1])[None, :] < lengths[:, None]
        wave = torch.where(valid, wave, 0.0)
        needed = (self.frames - 1) * self.hop + self.window
        wave = F.pad(wave, (0, max(0, needed - wave.shape[1])))
        frames = wave.unfold(1, self.window, self.hop)[:, : self.frames]
        power = torch.fft.rfft(frames * self.hann).abs().square() * self.gain
        return (torch.log(power @ self.mel + self.floor) + self.shift) / self.scale


class BenchModel(nn.Module):
    """configs/bench.py's model."""

    def __init__(self, *, image_size=64, patch=8, vocab=8192, text_length=32, rate=16000,
                 samples=16000, n_mels=64, window=512, hop=250, patch_time=8, patch_freq=8,
                 width=256, heads=4, mlp=1024, depth=2, fusion_depth=4, classes=10):
        super().__init__()
        self.patch, self.pt, self.pf, self.hop = patch, patch_time, patch_freq, hop
        frames = math.ceil(math.ceil(samples / hop) / patch_time) * patch_time
        audio_tokens = frames // patch_time * (n_mels // patch_freq)
        self.image_embed = nn.Linear(patch * patch * 3, width)
        self.image_pos = nn.Parameter(torch.randn((image_size // patch) ** 2, width) * 0.02)
        self.token_embed = nn.Embedding(vocab, width)
        self.text_pos = nn.Parameter(torch.randn(text_length, width) * 0.02)
        self.log_mel = LogMel(rate, n_mels, window, hop, frames)
        self.audio_embed = nn.Linear(patch_time * patch_freq, width)
        self.audio_pos = nn.Parameter(torch.randn(audio_tokens, width) * 0.02)
        self.image, self.text, self.audio = (Stack(depth, width, heads, mlp) for _ in range(3))
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        self.fusion = Stack(fusion_depth, width, heads, mlp)
        self.ln_final = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, image, text, audio, audio_length):
        b, hh, ww, c = image.shape
        p = self.patch
        x = image.float() / 127.5 - 1.0
        x = x.view(b, hh // p, p, ww // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)
        img = self.image(self.image_embed(x) + self.image_pos)
        text_mask = text != 0
        txt = self.text(self.token_embed(text) + self.text_pos, text_mask)
        mel = self.log_mel(audio, audio_length)  # [B, frames, n_mels]
        t, f = mel.shape[1] // self.pt, mel.shape[2] // self.pf
        a = mel.view(b, t, self.pt, f, self.pf).permute(0, 1, 3, 2, 4).reshape(b, t * f, -1)
        frame_valid = (torch.arange(t) * self.pt * self.hop)[None, :] < audio_length[:, None]
        audio_mask = frame_valid.repeat_interleave(f, dim=1)
        aud = self.audio(self.audio_embed(a) + self.audio_pos, audio_mask)
        tokens = torch.cat([self.cls.expand(b, 1, -1), img, txt, aud], dim=1)
        mask = torch.cat([torch.ones(b, 1 + img.shape[1], dtype=torch.bool), text_mask, audio_mask], dim=1)
        return self.head(self.ln_final(self.fusion(tokens, mask)[:, 0]))


class TorchStep:
    """One training step (forward, cross-entropy, backward, clip, AdamW) on fixed batches."""

    def __init__(self, batch: dict[str, np.ndarray], threads: int | None = None, seed: int = 0):
        torch.set_num_threads(threads or os.cpu_count() or 1)
        torch.manual_seed(seed)
        self.model = BenchModel()
        decay = [p for p in self.model.parameters() if p.ndim > 1]
        no_decay = [p for p in self.model.parameters() if p.ndim <= 1]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4
        )
        self.batch = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def __call__(self) -> float:
        b = self.batch
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(b["image"], b["text"].long(), b["audio"], b["audio_length"])
        loss = F.cross_entropy(logits, b["label"].long())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return float(loss.detach())


def main(argv):
    from bench.random_batch import random_batch  # noqa: E402  (bench/ run as a script)
    from mmjax import config as config_lib

    steps = int(next((a.split("=", 1)[1] for a in argv if a.startswith("--steps=")), 10))
    config = config_lib.load_config_file("configs/bench.py")
    step = TorchStep(random_batch(config, config.batch_size))
    print(f"torch {torch.__version__}: {step.num_params():,} parameters, {torch.get_num_threads()} threads")
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(f"median {1e3 * np.median(times):.1f} ms/step, {config.batch_size / np.median(times):.1f} examples/s")


if __name__ == "__main__":
    main(sys.argv[1:])
