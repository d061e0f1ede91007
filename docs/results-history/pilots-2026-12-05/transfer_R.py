import sys, time, torch, json
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/tmp/x")
from models.counterfactual import abduct
from warp_lib import register, warp
from img_effect_lib import smooth
torch.set_num_threads(2)
def rms(a, b): return ((a - b) ** 2).flatten(1).mean(1).sqrt()
for seed in [int(a) for a in sys.argv[1:]]:
    c = torch.load(f"/tmp/x/cache/seed{seed}.pt", weights_only=False)
    shared, data, truth = c["shared"], c["data"], c["truth"]
    m, s = shared.model, shared.sampler
    x_cn, x_ad = data["train_CN"], data["train_AD"][:6]
    cn = shared.index("CN")
    g = torch.Generator().manual_seed(seed)
    def lat(x):
        u, _ = abduct(m, s, x, cn, "mcmc", generator=g)
        return u.view(-1, len(x), u.shape[-1]).mean(0)
    with torch.no_grad():
        pass
    u_cn, u_ad = lat(x_cn), lat(x_ad)
    with torch.no_grad():
        rec_cn, rec_ad = m.decode(u_cn, y=cn), m.decode(u_ad, y=cn)
    base = rms(x_cn, truth)
    partner = torch.arange(60) % 6
    t0 = time.perf_counter()
    disp, loss = register(rec_ad[partner], rec_cn)
    print(f"seed {seed}: registration {time.perf_counter() - t0:.0f} s loss {loss:.3f}", flush=True)
    for sig in (0.5, 1.0, 1.5, 2.0):
        r_cn = smooth(x_cn - rec_cn, sig); r_ad = smooth(x_ad - rec_ad, sig)
        d = r_ad - r_cn.mean(0, keepdim=True)  # AD subject's departure from the CN model, minus the model's usual misfit
        with torch.no_grad():
            moved = warp(d[partner], disp)
        for lam in (0.5, 1.0):
            cf = x_cn + lam * moved
            R = 1 - rms(cf, truth) / base
            Rn = 1 - rms(x_cn + lam * d[partner], truth) / base
            print(f"  sigma {sig} lambda {lam}: R warped {R.mean():+.3f} (median {R.median():+.3f}); unwarped {Rn.mean():+.3f}", flush=True)
