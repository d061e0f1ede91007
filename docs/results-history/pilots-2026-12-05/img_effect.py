import sys, time, tempfile, torch, json
from pathlib import Path
sys.path.insert(0, "/work/main")
from bench.cohorts import build_data
from models.data import PreprocessConfig, load_tensors, make_demo_counterfactuals
import torch.nn.functional as F
torch.set_num_threads(1)
pre = PreprocessConfig()
def rms(a, b): return ((a - b) ** 2).flatten(1).mean(1).sqrt()
def smooth(x, s):
    if s == 0: return x
    r = int(3 * s); k = torch.exp(-torch.arange(-r, r + 1.) ** 2 / (2 * s * s)); k = k / k.sum()
    for d in range(3):
        shape = [1, 1, 1, 1, 1]; shape[2 + d] = -1
        pad = [0] * 6; pad[2 * (2 - d)] = r; pad[2 * (2 - d) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x
for seed in [int(a) for a in sys.argv[1:]]:
    with tempfile.TemporaryDirectory() as tmp:
        data = build_data(seed, Path(tmp), 60, 6, 20, pre, difficulty=0.6)
        truth = load_tensors(make_demo_counterfactuals(Path(tmp) / "t", range(60), seed=seed, difficulty=0.6), pre, Path(tmp) / "ct", "AD")
    cn, ad = data["train_CN"], data["train_AD"]
    e_true = truth - cn
    base = rms(cn, truth)
    print(f"seed {seed}: true effect rms {base.mean():.4f}; truth effect mean-over-subjects rms {e_true.mean(0).pow(2).mean().sqrt():.4f}")
    for s in [0, 1, 2]:
        a, c = smooth(ad, s), smooth(cn, s)
        d = a.mean(0) - c.mean(0)
        var = a.var(0) / len(a) + c.var(0) / len(c)
        t2 = d ** 2 / var
        for name, est in [("mean diff", d)] + [(f"JS k={k}", d * (1 - k / t2).clamp(min=0)) for k in (1, 2, 4, 8)]:
            R = 1 - rms(cn + est, truth) / base
            cos = (est.flatten() @ e_true.mean(0).flatten()) / (est.norm() * e_true.mean(0).norm() + 1e-12)
            print(f"  smooth {s} {name:10s} R mean {R.mean():+.3f} median {R.median():+.3f}  cos with mean true effect {cos:.3f}  |est| {est.pow(2).mean().sqrt():.4f}")
