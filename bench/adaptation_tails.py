"""How heavy-tailed the speed measure's acceptance term is at the start of phase 2 of the default
demo AD model (seed 0): log alpha over 8 minibatches x 5 transitions x 4 chains from the warm-started
h, and each chain's gradient of -log alpha in log h (the entropy term's is beta * d).
Needs the phase-1 state cached by bench/adaptation_diag.py 0 ...

    OMP_NUM_THREADS=1 python bench/adaptation_tails.py
"""
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)
from models import build_model, build_sampler
from models.augment import AugmentConfig, ModelConfig
from models.data import PreprocessConfig, load_tensors, make_demo_cohort

config=AugmentConfig(); tmp=Path(tempfile.mkdtemp())
cohort=make_demo_cohort(tmp/'c',n_control=40,n_ad=4,shape=(32,32,32),seed=0)
pre=PreprocessConfig(spatial_dims=3); x=load_tensors(cohort,pre,tmp/'cache','AD')
m=build_model(ModelConfig(data_shape=(1,*pre.target_shape),**config.model.model_dump()))
s=build_sampler(config.sampler.model_copy(update={'accept_gain':0.0,'beta_rate':0.0}),m.latent_dim)
st=torch.load(Path(tempfile.gettempdir()) / 'mcvae_adaptation_pre_0.pt', weights_only=False); m.load_state_dict(st['model']); s.load_state_dict(st['sampler'])
g=torch.Generator().manual_seed(0)
target=lambda u: m.log_joint(x,u)
u0,_=m.rsample(x,generator=g); u0=u0.detach()
s.warm_start(target,u0,generator=g)
print('h',s.step_size)
s.train(); las=[]; grads=[]
for rep in range(8):
    u0,_=m.rsample(x,generator=g); u0=u0.detach(); state=None; z=u0
    for k in range(5):
        from models.samplers.state import evaluate
        if state is None: state=evaluate(target,z)
        log_h=s.log_step
        prop,la,fin=s._propose(state,target,log_h,g)
        for i in range(len(la)):
            gi,=torch.autograd.grad(-la[i],s.log_step,retain_graph=True); gi=gi.detach(); grads.append(float(gi)); las.append(float(la[i].detach()))
        z,info=s.step(z,target,state,g); state=info.state
las_t=torch.tensor(las); gr=torch.tensor(grads)
print('n',len(las),'mean alpha',float(las_t.exp().mean()),'quantiles log alpha',[round(float(q),2) for q in las_t.quantile(torch.tensor([0.0,0.05,0.25,0.5]))])
print('grad -log alpha wrt log h per chain: mean',float(gr.mean()),'median',float(gr.median()),'max',float(gr.max()),'share of sum from top 5%',float(gr.sort(descending=True).values[:max(1,len(gr)//20)].sum()/gr.sum()))
print('entropy grad per unit beta', s.dim)
