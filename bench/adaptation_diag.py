"""Why entropy adaptation drifts off target in the demo: phase 2 of the default demo AD model
(32^3, seed S) re-run from one shared phase-1 state under sampler-rule variants.

    OMP_NUM_THREADS=1 python bench/adaptation_diag.py SEED '{"name": {SamplerConfig overrides}}' [STEPS]

Pretrains once (600 steps, cached in /tmp/i12/pre_SEED.pt), then for each variant prints per 10
epochs: mean acceptance, beta, h, log|det C|, the likelihood's log-variance and the ELBO, and the
mean acceptance of the last 10 % of phase 2. The variant's Trainer loads the phase-1 optimiser
states, so a SamplerConfig.lr override has no effect here (Adam's saved lr wins).
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)
from models import Trainer, TrainingCancelled, build_model, build_sampler
from models.augment import AugmentConfig, ModelConfig
from models.data import PreprocessConfig, load_tensors, make_demo_cohort

seed = int(sys.argv[1]); variants = json.loads(sys.argv[2]); steps = int(sys.argv[3]) if len(sys.argv) > 3 else 150
config = AugmentConfig()
state_file = Path(tempfile.gettempdir()) / f'mcvae_adaptation_pre_{seed}.pt'
tmp = Path(tempfile.mkdtemp())
cohort = make_demo_cohort(tmp / 'c', n_control=40, n_ad=4, shape=(32, 32, 32), seed=seed)
pre = PreprocessConfig(spatial_dims=3)
x = load_tensors(cohort, pre, tmp / 'cache', 'AD')
model_cfg = ModelConfig(data_shape=(1, *pre.target_shape), **config.model.model_dump())
tcfg = config.train.model_copy(update={'seed': seed * 1009, 'batch_size': 4, 'pretrain_epochs': 600, 'epochs': steps})

def trainer(scfg):
    torch.manual_seed(seed * 1009)
    m = build_model(model_cfg)
    return Trainer(m, build_sampler(scfg, m.latent_dim), x, tcfg)

if not state_file.exists():
    t = trainer(config.sampler); box = {}
    def stop(done, total):
        if done == 600:
            box['s'] = t.state_dict(); raise TrainingCancelled()
    try: t.fit(on_step=stop)
    except TrainingCancelled: pass
    torch.save(box['s'], state_file)
state = torch.load(state_file, weights_only=False)
for name, over in variants.items():
    scfg = config.sampler.model_copy(update=over)
    t = trainer(scfg)
    t.load_state_dict(state)
    rows = []
    def cb(r, t=t, rows=rows):
        rows.append(dict(e=r.epoch, a=round(r.accept, 3), beta=round(r.beta, 4), h=round(r.step_size, 4),
                         ldc=round(r.log_det_c, 3), obs=round(float(t.model.likelihood.log_var.detach()), 3), elbo=round(r.elbo)))
    t0 = time.time(); t.fit(callback=cb)
    acc = [r['a'] for r in rows]
    print(name, json.dumps(over), f'{time.time()-t0:.0f}s', 'final10%', round(sum(acc[-15:])/15, 3), 'min', min(acc[10:]), flush=True)
    for r in rows[::10] + [rows[-1]]: print('  ', r)
    
