"""Cost of one MCMC step relative to one decoder forward+backward with respect to z.

Goal (issue #2): MALA <= 1.3 (one new gradient per step, the current one is reused), HMC
about L + 0.3. Measured at batch 64 on 3-D 32^3 scans with the conv networks.

    python bench/sampler_cost.py [--device cpu] [--batch 64] [--size 32] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, parse_args, timed, write_result
from models import ModelConfig, SamplerConfig, build_model, build_sampler
from models.samplers import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    args = parse_args(parser, {"batch": 4, "size": 16, "latent": 4, "leapfrog": 2, "repeats": 2})
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    torch.manual_seed(0)
    cfg = ModelConfig(data_shape=(1,) + (args.size,) * 3, arch="conv", latent_dims=[args.latent],
                      channels=(16, 32, 64), likelihood="gaussian")
    model = build_model(cfg).to(device).eval()
    x = torch.rand(args.batch, *cfg.data_shape, device=device)
    z = torch.randn(args.batch, args.latent, device=device)
    log_prob = lambda u: model.log_joint(x, u)

    base = statistics.median(timed(lambda: evaluate(log_prob, z), args.repeats, sync=sync))
    rows = [("decoder forward+backward wrt z", base, 1.0)]

    def measure(label: str, kind: str, adapting: bool, leapfrog: int = 1) -> None:
        scfg = SamplerConfig(kind=kind, adaptation="entropy", preconditioner="diag",
                             n_leapfrog=leapfrog, step_size=0.01)
        sampler = build_sampler(scfg, args.latent).to(device)
        sampler.train(adapting)
        opt = torch.optim.Adam(sampler.parameters(), lr=1e-3)
        state = {"z": z, "chain": None}

        def one_step():
            zn, info = sampler.step(state["z"], log_prob, state["chain"])
            if adapting:
                opt.zero_grad()
                info.loss.backward()
                opt.step()
            state["z"], state["chain"] = zn, info.state

        seconds = statistics.median(timed(one_step, args.repeats, sync=sync))
        rows.append((label, seconds, seconds / base))

    measure("MALA step, adaptation frozen", "mala", False)
    measure("MALA step, entropy adaptation (+loss backward, Adam)", "mala", True)
    measure(f"HMC step L={args.leapfrog}, adaptation frozen", "hmc", False, args.leapfrog)
    measure(f"HMC step L={args.leapfrog}, entropy adaptation", "hmc", True, args.leapfrog)

    where = machine(args.device)
    print(f"sampler cost, batch {args.batch}, 3-D {args.size}^3, latent {args.latent}, {where}")
    print(f"{'what':58s} {'seconds':>9s} {'ratio':>7s}")
    for label, seconds, ratio in rows:
        print(f"{label:58s} {seconds:9.4f} {ratio:7.2f}")
    out = write_result(
        f"sampler_cost_{device.type}",
        {"machine": where, "batch": args.batch, "size": args.size, "latent": args.latent,
         "rows": [{"what": l, "seconds": s, "ratio": r} for l, s, r in rows]},
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
