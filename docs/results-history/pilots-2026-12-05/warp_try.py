import sys, time, torch, json
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/x")
from bench.cohorts import duplicate_copies, held_out, labelled
from bench.metrics import score
from models.classifier import train_classifier
from models.counterfactual import Variations
from models.report import gradient_energy
from warp_lib import register, warp
torch.set_num_threads(1)
out = []
for seed in [int(a) for a in sys.argv[1:]]:
    c = torch.load(f"/tmp/x/cache/seed{seed}.pt", weights_only=False)
    shared, data = c["shared"], c["data"]
    x_cn, x_ad = data["train_CN"], data["train_AD"][:6]
    xt, yt = held_out(data)
    n_max = 30
    g = torch.Generator().manual_seed(seed + 3)
    picks = [(k % 6, *torch.randperm(60, generator=g)[:2].tolist()) for k in range(n_max)]
    cn, ad = shared.index("CN"), shared.index("AD")
    V = Variations(shared.model, shared.sampler, x_ad, ad, x_cn, cn, "mcmc", seed=seed + 5)
    extras = {"dup": duplicate_copies(x_ad, n_max, seed)}
    t0 = time.perf_counter()
    with torch.no_grad():
        a = torch.tensor([p[0] for p in picks])
        base = shared.model.decode(shared.model.from_exogenous(V.noise[a], y=ad), y=ad)
    for scale in (1.0, 2.0):
        fixed = V(picks, scale, value_range=(-10, 10))  # decoded moved + own residual, unclipped
        moved = fixed - V.residual[a]
        disp, loss = register(base.detach(), moved.detach())
        with torch.no_grad():
            r = V.residual[a]
            if scale == 1.0:
                extras["fixed x1"] = fixed.clamp(0, 1)
            extras[f"warped-nearest x{scale:g}"] = (moved + warp(r, disp, "nearest")).clamp(0, 1)
            extras[f"warp-only-nearest x{scale:g}"] = warp(x_ad[a], disp, "nearest").clamp(0, 1)
            if scale == 2.0:
                extras[f"warped-bilinear x{scale:g}"] = (moved + warp(r, disp, "bilinear")).clamp(0, 1)
        print(f"seed {seed} scale {scale}: registration loss {loss:.3f}, max disp (vox) {disp.abs().max() * 15.5:.2f}, {time.perf_counter() - t0:.0f} s", flush=True)
    e0 = gradient_energy(x_ad)
    for name, e in extras.items():
        print(f"  {name:24s} energy ratio {gradient_energy(e) / e0:.3f}", flush=True)
    torch.save(extras, f"/tmp/x/cache/extras_warp{seed}.pt")
    def run(name, extra):
        x, y = labelled(x_cn, torch.cat([x_ad, extra]))
        s = score(train_classifier(x, y, seed, 100), xt, yt)
        out.append({"seed": seed, "cond": name, "auroc": s["auroc"], "bacc": s["balanced_accuracy"]})
        print(seed, f"{name:28s} AUROC {s['auroc']:.3f} bacc {s['balanced_accuracy']:.3f}", flush=True)
    run("real", x_ad[:0])
    for name, e in extras.items():
        for k in (2, 5):
            run(f"{name} {k}x", e[:6 * k])
    json.dump(out, open(f"/tmp/x/warp_{sys.argv[1]}.json", "w"))
