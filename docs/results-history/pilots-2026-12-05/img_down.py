import sys, time, tempfile, torch, json
from pathlib import Path
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/x")
from bench.cohorts import build_data, duplicate_copies, held_out, labelled
from bench.metrics import score
from models.classifier import train_classifier
from models.data import PreprocessConfig, load_tensors, make_demo_counterfactuals
from img_effect_lib import smooth
torch.set_num_threads(1)
pre = PreprocessConfig()
out = []
for seed in [int(a) for a in sys.argv[1:]]:
    with tempfile.TemporaryDirectory() as tmp:
        data = build_data(seed, Path(tmp), 60, 6, 20, pre, difficulty=0.6)
        truth = load_tensors(make_demo_counterfactuals(Path(tmp) / "t", range(60), seed=seed, difficulty=0.6), pre, Path(tmp) / "ct", "AD")
    cn, ad = data["train_CN"], data["train_AD"]
    xt, yt = held_out(data)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(seed))[:30]
    a, c = smooth(ad, 2), smooth(cn, 2)
    d = a.mean(0) - c.mean(0); t2 = d ** 2 / (a.var(0) / 6 + c.var(0) / 60)
    js = d * (1 - 4 / t2).clamp(min=0)
    ebar = (truth - cn).mean(0)
    extras = {"dup": duplicate_copies(ad, 30, seed), "true mean effect": (cn + ebar).clamp(0, 1)[order],
              "JS s2 k4": (cn + js).clamp(0, 1)[order], "oracle": truth[order]}
    def run(name, extra):
        x, y = labelled(cn, torch.cat([ad, extra]))
        s = score(train_classifier(x, y, seed, 100), xt, yt)
        out.append({"seed": seed, "cond": name, "auroc": s["auroc"], "bacc": s["balanced_accuracy"]})
        print(seed, f"{name:24s} AUROC {s['auroc']:.3f} bacc {s['balanced_accuracy']:.3f}", flush=True)
    run("real", ad[:0])
    for name, e in extras.items():
        for k in (2, 5):
            run(f"{name} {k}x", e[:6 * k])
json.dump(out, open(f"/tmp/x/img_down_{sys.argv[1]}.json", "w"))
