import sys, time, torch, json
import torch.nn.functional as F
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/x")
from bench.cohorts import duplicate_copies, held_out, labelled
from bench.metrics import score
from models.classifier import train_classifier, predict
from models.counterfactual import abduct
from models.report import gradient_energy
torch.set_num_threads(1)
def rms(a, b): return ((a - b) ** 2).flatten(1).mean(1).sqrt()
downstream = "--down" in sys.argv
seeds = [int(a) for a in sys.argv[1:] if not a.startswith("--")]
out = []
for seed in seeds:
    c = torch.load(f"/tmp/x/cache/seed{seed}.pt", weights_only=False)
    shared, data, truth = c["shared"], c["data"], c["truth"]
    m, s = shared.model, shared.sampler
    x_cn, x_ad = data["train_CN"], data["train_AD"][:6]
    xt, yt = held_out(data)
    cn, ad = shared.index("CN"), shared.index("AD")
    x, y = labelled(x_cn, x_ad)
    t0 = time.perf_counter()
    refs = [train_classifier(x, y, seed * 7 + k + 100, 100) for k in range(3)]
    for r in refs:
        for p in r.parameters():
            p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    u, _ = abduct(m, s, x_cn, cn, "mcmc", generator=g)
    u = u.view(-1, len(x_cn), u.shape[-1]).mean(0)
    with torch.no_grad():
        e = m.exogenous(u, y=cn)
        base = m.decode(m.from_exogenous(e, y=cn), y=cn)
    print(f"seed {seed}: refs+abduction {time.perf_counter() - t0:.0f} s", flush=True)
    def guided(lam, target, steps=60, lr=0.05):
        d = torch.zeros_like(e, requires_grad=True)
        opt = torch.optim.Adam([d], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            cf = x_cn + m.decode(m.from_exogenous(e + d, y=cn), y=cn) - base
            margin = torch.stack([(lambda o: o[:, 1] - o[:, 0])(r(cf)) for r in refs]).mean(0)
            loss = F.relu(target - margin).mean() + lam * (d ** 2).sum(1).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            cf = (x_cn + m.decode(m.from_exogenous(e + d, y=cn), y=cn) - base).clamp(0, 1)
        return cf, d.detach()
    p0 = torch.stack([predict(r, x_cn)[:, 1] for r in refs]).mean(0)
    base_R = rms(x_cn, truth)
    extras = {"dup": duplicate_copies(x_ad, 30, seed)}
    order = torch.randperm(60, generator=torch.Generator().manual_seed(seed))[:30]
    for lam, target in [(0.01, 2.0), (0.01, 4.0)]:
        t0 = time.perf_counter()
        cf, d = guided(lam, target)
        p1 = torch.stack([predict(r, cf)[:, 1] for r in refs]).mean(0)
        R = 1 - rms(cf, truth) / base_R
        # a classifier never trained with these: does it call them AD?
        print(f"  lam {lam} target {target}: {time.perf_counter() - t0:.0f} s, |d| {d.norm(dim=1).mean():.2f}, p_AD {p0.mean():.2f} -> {p1.mean():.2f}, "
              f"R {R.mean():+.3f} (median {R.median():+.3f}), energy {gradient_energy(cf) / gradient_energy(x_ad):.3f}, rms change {rms(cf, x_cn).mean():.4f} vs true {base_R.mean():.4f}", flush=True)
        extras[f"guided l{lam} t{target}"] = cf[order]
    if downstream:
        def run(name, extra):
            xx, yy = labelled(x_cn, torch.cat([x_ad, extra]))
            sc = score(train_classifier(xx, yy, seed, 100), xt, yt)
            out.append({"seed": seed, "cond": name, "auroc": sc["auroc"], "bacc": sc["balanced_accuracy"]})
            print(seed, f"{name:28s} AUROC {sc['auroc']:.3f} bacc {sc['balanced_accuracy']:.3f}", flush=True)
        run("real", x_ad[:0])
        for name, ex in extras.items():
            for k in (2, 5):
                run(f"{name} {k}x", ex[:6 * k])
        json.dump(out, open(f"/tmp/x/guided_{seeds[0]}.json", "w"))
